"""Helpers for the add-on's Geometry Nodes groups and their drivers (shared by the detail and
eye rigs)."""
from __future__ import annotations

import bpy

# Stamped on each group: a file made by an older add-on gets its groups rebuilt.
GROUP_VERSION = 1


def versioned_group(name: str, description: str) -> tuple[bpy.types.NodeTree, bool]:
    """(group, True) when the file already holds this version of the group; else a new, empty
    group stamped with the version, and False."""
    ng = bpy.data.node_groups.get(name)
    if ng is not None and ng.bl_idname == "GeometryNodeTree" \
            and ng.get("hiface_version") == GROUP_VERSION:
        return ng, True
    ng = bpy.data.node_groups.new(name, "GeometryNodeTree")
    ng["hiface_version"] = GROUP_VERSION
    ng.description = description
    return ng, False


def float_input(io, name: str, default: float, lo: float, hi: float, description: str):
    sock = io.new_socket(name, in_out="INPUT", socket_type="NodeSocketFloat")
    sock.default_value, sock.min_value, sock.max_value = default, lo, hi
    sock.description = description
    return sock


def node_factory(nodes):
    def node(kind, x, y, **props):
        n = nodes.new(kind)
        n.location = (x, y)
        for k, v in props.items():
            setattr(n, k, v)
        return n
    return node


def socket_id(group, name: str) -> str:
    """Identifier of a node group input (the key of the modifier's value)."""
    return next(i.identifier for i in group.interface.items_tree
                if getattr(i, "in_out", None) == "INPUT" and i.name == name)


def add_driver(owner, path: str, expression: str, variables) -> None:
    """Drive `owner`'s `path` (replacing any driver there) by a simple expression over
    single-property variables, given as (name, id_type, id, data_path). A simple expression is
    evaluated without Python, so it also runs with scripts disabled."""
    owner.driver_remove(path)
    fc = owner.driver_add(path)
    drv = fc.driver
    drv.type = "SCRIPTED"
    for name, id_type, id_, data_path in variables:
        var = drv.variables.new()
        var.name, var.type = name, "SINGLE_PROP"
        var.targets[0].id_type = id_type
        var.targets[0].id = id_
        var.targets[0].data_path = data_path
    drv.expression = expression
    for mod in list(fc.modifiers):
        fc.modifiers.remove(mod)

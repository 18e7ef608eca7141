"""The eye rig of a HiFace object: the eyeballs turn with the eyeLook shape keys.

ICT's eyeLook shapes move only the lids. A Geometry Nodes modifier, first in the stack (right
after the shape keys), turns each eyeball rigidly about its centre:

    HiFace Eyes    the points of the `hiface_eyeball` attribute (1 left, 2 right) rotated by
                   up/down (about X) and then sideways (about Z), as core.gaze does

Four simple-expression drivers (no Python at playback) feed it from the eyeLook keys' values
and the object's angle properties "Gaze Sideways", "Gaze Up" and "Gaze Down" (the turn at a
key value of 1; defaults core.gaze.GAZE_DEGREES). So keyframes, drivers, retargeted actions
and ARKit CSV takes on the eyeLook keys turn the eyes, and the artist can tune the angles.
A rigid turn keeps every edge length, so the detail rig's tension does not see it.
"""
from __future__ import annotations

import math

import bpy
import numpy as np

from ..core.gaze import GAZE_DEGREES, SIDES
from .node_groups import add_driver, float_input, node_factory, socket_id, versioned_group

EYEBALL_ATTRIBUTE = "hiface_eyeball"
MOD_EYES = "HiFace Eyes"
EYES_GROUP_NAME = "HiFace Eyes"
GAZE_PROPS = {"sideways": "Gaze Sideways", "up": "Gaze Up", "down": "Gaze Down"}
_GAZE_HELP = {
    "sideways": "How far an eye turns sideways at eyeLookIn / eyeLookOut = 1",
    "up": "How far the eyes turn up at eyeLookUp = 1",
    "down": "How far the eyes turn down at eyeLookDown = 1",
}
_SIDE_NAMES = {"L": "Left", "R": "Right"}


def eyes_node_group() -> bpy.types.NodeTree:
    """The shared eye node group (created once per file, rebuilt if outdated)."""
    ng, current = versioned_group(EYES_GROUP_NAME,
                                   "Turns each eyeball about its centre (up/down, then sideways)")
    if current:
        return ng
    io = ng.interface
    io.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    for side in SIDES:
        label = _SIDE_NAMES[side]
        sock = io.new_socket(f"{label} Centre", in_out="INPUT", socket_type="NodeSocketVector")
        sock.description = f"Centre of the {label.lower()} eyeball (object space)"
        float_input(io, f"{label} Sideways", 0.0, -math.pi, math.pi,
                     "Turn towards the face's own left, radians (driven)")
        float_input(io, f"{label} Up", 0.0, -math.pi, math.pi, "Turn up, radians (driven)")
    io.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")

    nodes, links = ng.nodes, ng.links
    node = node_factory(nodes)
    gin = node("NodeGroupInput", -900, 0)
    gout = node("NodeGroupOutput", 700, 0)
    which = node("GeometryNodeInputNamedAttribute", -700, 300, data_type="INT")
    which.inputs["Name"].default_value = EYEBALL_ATTRIBUTE
    position = node("GeometryNodeInputPosition", -700, 150)
    prev = gin.outputs["Geometry"]
    for i, side in enumerate(SIDES):
        label, y = _SIDE_NAMES[side], -300 * i
        is_eye = node("FunctionNodeCompare", -450, y + 200, data_type="INT", operation="EQUAL")
        links.new(which.outputs["Attribute"], is_eye.inputs[2])
        is_eye.inputs[3].default_value = i + 1
        # Euler XYZ applies X (up/down; a positive X turns the front -Y down) before Z.
        down = node("ShaderNodeMath", -450, y, operation="MULTIPLY")
        links.new(gin.outputs[f"{label} Up"], down.inputs[0])
        down.inputs[1].default_value = -1.0
        euler = node("ShaderNodeCombineXYZ", -250, y)
        links.new(down.outputs[0], euler.inputs["X"])
        links.new(gin.outputs[f"{label} Sideways"], euler.inputs["Z"])
        rotate = node("ShaderNodeVectorRotate", 0, y, rotation_type="EULER_XYZ")
        links.new(position.outputs["Position"], rotate.inputs["Vector"])
        links.new(gin.outputs[f"{label} Centre"], rotate.inputs["Center"])
        links.new(euler.outputs["Vector"], rotate.inputs["Rotation"])
        setp = node("GeometryNodeSetPosition", 250 + 200 * i, y + 100)
        links.new(prev, setp.inputs["Geometry"])
        links.new(is_eye.outputs["Result"], setp.inputs["Selection"])
        links.new(rotate.outputs["Vector"], setp.inputs["Position"])
        prev = setp.outputs["Geometry"]
    links.new(prev, gout.inputs["Geometry"])
    return ng


def _add_angle(obj, name: str, degrees: float, description: str) -> None:
    obj[name] = math.radians(degrees)
    obj.id_properties_ui(name).update(subtype="ANGLE", min=0.0, max=math.radians(60.0),
                                      soft_min=0.0, soft_max=math.radians(60.0),
                                      default=math.radians(degrees), precision=1,
                                      description=description)
    obj.property_overridable_library_set(f'["{name}"]', True)


def _drive_turn(obj, path: str, expression: str, keys: dict[str, str],
                angles: dict[str, str]) -> None:
    """Drive `path` from eyeLook key values (`keys`: variable -> key) and the object's angle
    properties (`angles`: variable -> property)."""
    add_driver(obj, path, expression,
               [(var, "KEY", obj.data.shape_keys, f'key_blocks["{key}"].value')
                for var, key in keys.items()]
               + [(var, "OBJECT", obj, f'["{prop}"]') for var, prop in angles.items()])


def add_eye_rig(obj, eyeball: np.ndarray, centres: np.ndarray) -> None:
    """Give a HiFace object the eye rig. `eyeball` (V,) int: 1 on the left eyeball's vertices,
    2 on the right's, 0 elsewhere; `centres` (2, 3): the eyeballs' centres in object space."""
    key = obj.data.shape_keys
    if key is None:
        raise ValueError(f"{obj.name} has no shape keys (not a HiFace face?)")
    missing = [f"eyeLook{d}_{s}" for s in SIDES for d in ("In", "Out", "Up", "Down")
               if f"eyeLook{d}_{s}" not in key.key_blocks]
    if missing:
        raise ValueError(f"{obj.name} has no shape key {missing[0]}")
    me = obj.data
    attr = me.attributes.get(EYEBALL_ATTRIBUTE) or me.attributes.new(EYEBALL_ATTRIBUTE, "INT",
                                                                       "POINT")
    attr.data.foreach_set("value", np.ascontiguousarray(eyeball, np.int32))
    for which, prop in GAZE_PROPS.items():
        _add_angle(obj, prop, GAZE_DEGREES[which], _GAZE_HELP[which])

    mod = obj.modifiers.get(MOD_EYES) or obj.modifiers.new(MOD_EYES, "NODES")
    group = mod.node_group = eyes_node_group()
    obj.modifiers.move(list(obj.modifiers).index(mod), 0)   # before any subdivision
    angles = {"side": GAZE_PROPS["sideways"], "up_angle": GAZE_PROPS["up"],
              "down_angle": GAZE_PROPS["down"]}
    for i, side in enumerate(SIDES):
        label = _SIDE_NAMES[side]
        mod[socket_id(group, f"{label} Centre")] = [float(x) for x in centres[i]]
        # eyeLookOut turns the left eye towards the face's left, eyeLookIn the right eye.
        towards_left = "(look_out - look_in)" if side == "L" else "(look_in - look_out)"
        _drive_turn(obj, f'modifiers["{MOD_EYES}"]["{socket_id(group, f"{label} Sideways")}"]',
                    f"{towards_left} * side",
                    {"look_in": f"eyeLookIn_{side}", "look_out": f"eyeLookOut_{side}"},
                    {"side": angles["side"]})
        _drive_turn(obj, f'modifiers["{MOD_EYES}"]["{socket_id(group, f"{label} Up")}"]',
                    "look_up * up_angle - look_down * down_angle",
                    {"look_up": f"eyeLookUp_{side}", "look_down": f"eyeLookDown_{side}"},
                    {"up_angle": angles["up_angle"], "down_angle": angles["down_angle"]})


def remove_eye_rig(obj) -> None:
    """Remove the modifier and its drivers (the eyes look ahead again)."""
    if obj.animation_data is not None:
        for fc in [fc for fc in obj.animation_data.drivers
                   if f'modifiers["{MOD_EYES}"]' in fc.data_path]:
            obj.animation_data.drivers.remove(fc)
    mod = obj.modifiers.get(MOD_EYES)
    if mod is not None:
        obj.modifiers.remove(mod)

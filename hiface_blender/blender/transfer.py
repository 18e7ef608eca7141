"""Detail transfer between two HiFace faces in a .blend: the target takes the source's
expression (shape-key values and their animation) and its expression wrinkles (the dynamic
maps); the target's identity and static relief stay its own. Faces share the ICT topology,
shape-key names and UV layout, so keys, F-Curves and maps apply unchanged."""
from __future__ import annotations

import bpy
import numpy as np

from . import detail_rig as dr


def _is_face(obj) -> bool:
    return (obj is not None and obj.type == "MESH" and bool(obj.get("hiface"))
            and obj.data.shape_keys is not None)


def check_transfer(source_obj, target_obj, *, dynamic_maps: bool = True) -> None:
    """Raise ValueError (one line) if the transfer cannot be done; changes nothing."""
    if source_obj is None or target_obj is None:
        raise ValueError("select two HiFace faces: the source and the active target")
    if source_obj == target_obj:
        raise ValueError(f"{source_obj.name} is both the source and the target")
    for role, obj in (("source", source_obj), ("target", target_obj)):
        if not _is_face(obj):
            raise ValueError(f"the {role} {obj.name} is not a HiFace face")
    if source_obj.data == target_obj.data:
        raise ValueError(f"{source_obj.name} and {target_obj.name} share one mesh")
    if dynamic_maps:
        for role, obj in (("source", source_obj), ("target", target_obj)):
            if not dr.is_rigged(obj) or dr.dynamic_image(obj) is None:
                raise ValueError(f"the {role} {obj.name} has no detail rig")
        if dr.static_image(target_obj) is None:
            raise ValueError(f"the target {target_obj.name} has no static detail map")
        if len(source_obj.get(dr.SCALE_PROP, ())) != 3:
            raise ValueError(f"the source {source_obj.name} has no detail scales")


def _copy_image(src: bpy.types.Image, name: str) -> bpy.types.Image:
    w, h = src.size
    px = np.empty(w * h * 4, np.float32)
    src.pixels.foreach_get(px)
    img = bpy.data.images.new(name, w, h, alpha=False, float_buffer=True, is_data=True)
    try:
        img.colorspace_settings.is_data = True
        img.pixels.foreach_set(px)
        img.pack()
    except Exception:
        bpy.data.images.remove(img)
        raise
    if "hiface_scale_m" in src:
        img["hiface_scale_m"] = list(src["hiface_scale_m"])
    return img


def transfer_detail(source_obj, target_obj, *, expressions: bool = True, animation: bool = True,
                    dynamic_maps: bool = True) -> None:
    """Drive the target face by the source: same-named shape-key values, the source's
    shape-key action (if animated), and the source's compressed / stretched maps in the
    target's rig. Everything is checked first: on ValueError nothing has changed."""
    check_transfer(source_obj, target_obj, dynamic_maps=dynamic_maps)
    src_keys, dst_keys = source_obj.data.shape_keys, target_obj.data.shape_keys
    if expressions:
        for kb in src_keys.key_blocks[1:]:
            dst = dst_keys.key_blocks.get(kb.name)
            if dst is not None:
                dst.value = kb.value
    src_ad = src_keys.animation_data
    if animation and src_ad is not None and src_ad.action is not None:
        ad = dst_keys.animation_data or dst_keys.animation_data_create()
        ad.action = src_ad.action
        # Slotted actions (Blender 4.4+): use the source's slot so its F-Curves apply.
        if hasattr(ad, "action_slot") and src_ad.action_slot is not None:
            ad.action_slot = src_ad.action_slot
    if animation and src_ad is not None and len(src_ad.drivers):
        _copy_key_drivers(src_ad, dst_keys)
    if dynamic_maps:
        _replace_dynamic_maps(source_obj, target_obj)
    target_obj.update_tag()


def _copy_key_drivers(src_ad, dst_keys) -> None:
    """The source's shape-key drivers, copied onto the target's same-named keys (a driver there
    is replaced). Variables keep their targets, so both faces follow the same controls."""
    names = {kb.name for kb in dst_keys.key_blocks}
    for fc in src_ad.drivers:
        path = fc.data_path
        parts = path.split('"')
        if not path.startswith("key_blocks[") or len(parts) < 3 or parts[1] not in names:
            continue
        dst_ad = dst_keys.animation_data or dst_keys.animation_data_create()
        old = dst_ad.drivers.find(path, index=fc.array_index)
        if old is not None:
            dst_ad.drivers.remove(old)
        dst_ad.drivers.from_existing(src_driver=fc)   # driver, variables and modifiers


def _replace_dynamic_maps(source_obj, target_obj) -> None:
    old = dr.dynamic_image(target_obj)
    new = _copy_image(dr.dynamic_image(source_obj), f"{target_obj.name} Detail Dynamic")
    scales = [float(target_obj[dr.SCALE_PROP][0]), *map(float, source_obj[dr.SCALE_PROP][1:])]
    target_obj[dr.SCALE_PROP] = scales
    mod = target_obj.modifiers[dr.MOD_DYNAMIC]
    group = mod.node_group
    for name, value in (("Maps", new), ("Compressed Scale", scales[1]),
                        ("Stretched Scale", scales[2])):
        mod[dr.socket_id(group, name)] = value
    mat = dr.skin_material(target_obj)
    if mat is not None and mat.node_tree is not None:
        dr.add_detail_shading(mat, dr.static_image(target_obj), new, scales)
        dr.set_detail_mode(target_obj, target_obj.get(dr.MODE_PROP, "MODIFIERS"))
    if old is not None and old.users == 0:
        bpy.data.images.remove(old)
        new.name = f"{target_obj.name} Detail Dynamic"  # drop the .001 the old one forced

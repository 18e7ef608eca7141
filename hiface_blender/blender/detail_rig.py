"""The detail rig of a HiFace object: live tension, subdivision and displacement.

Modifier stack (after the shape keys, which Blender always applies first):

    HiFace Tension           Geometry Nodes: per-vertex tension of the current mesh against
                             the rest positions in the `hiface_rest` point attribute, as two
                             weights 0..1 in the point attributes `hiface_compression` and
                             `hiface_stretch`
    HiFace Subdivision       viewport 1, render 2 levels; interpolates the weights
    HiFace Static Detail     Displace by the static map (UV)
    HiFace Dynamic Detail    Geometry Nodes: offset along the normal by the compressed map x
                             compression weight + the stretched map x stretch weight

Everything is evaluated by the depsgraph: the detail follows shape-key keyframes, drivers and
retargeted animation without a frame handler. Tension is the quantity of core.tension: the mean
relative change of a vertex's incident edge lengths (negative = compressed).

The weights are generic attributes rather than vertex groups: the subdivision interpolates
generic floats several times faster than deform weights (which dominated the playback cost), and
Cycles and EEVEE read them in the skin material. The dynamic offset is therefore done in Geometry
Nodes; the static one keeps a plain Displace modifier.

The object properties "Static Detail" and "Dynamic Detail" (0..2, keyframeable, overridable)
drive the strengths through simple-expression drivers (no Python at playback) and are read by
the skin material, which can show the same detail as bump or true displacement instead of the
modifiers (`set_detail_mode`).

Maps are stored in float images (packed into the .blend) as d / scale, so that a sample is 0
outside the face tile (Clip extension) and the strength is scale x slider.
"""
from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np

from .node_groups import add_driver, float_input, node_factory, socket_id, versioned_group

REST_ATTRIBUTE = "hiface_rest"
UV_ATTRIBUTE = "hiface_detail_uv"
COMPRESSION_ATTRIBUTE = "hiface_compression"
STRETCH_ATTRIBUTE = "hiface_stretch"
STATIC_PROP = "Static Detail"
DYNAMIC_PROP = "Dynamic Detail"
MODE_PROP = "hiface_detail_mode"
SCALE_PROP = "hiface_detail_scale_m"

MOD_TENSION = "HiFace Tension"
MOD_SUBSURF = "HiFace Subdivision"
MOD_STATIC = "HiFace Static Detail"
MOD_DYNAMIC = "HiFace Dynamic Detail"
DYNAMIC_MODIFIERS = (MOD_TENSION, MOD_DYNAMIC)
DISPLACE_MODIFIERS = (MOD_STATIC, MOD_DYNAMIC)
RIG_MODIFIERS = (MOD_TENSION, MOD_SUBSURF, MOD_STATIC, MOD_DYNAMIC)

TENSION_GROUP_NAME = "HiFace Tension"
DYNAMIC_GROUP_NAME = "HiFace Dynamic Detail"
# Mean incident-edge length change at which a weight reaches 1. The mean over all directions
# is a fraction of the principal compression: a full smile shortens the mean edge at the
# cheek and eye corner by 2-12 % where the principal compression (which the compressed map's
# folds are made for) reaches 30 %; a wide-open jaw lengthens the lower lip's by 3-15 %.
FULL_COMPRESSION = 0.05
FULL_STRETCH = 0.10

MODES = (
    ("MODIFIERS", "Geometry", "Displace modifiers on the subdivided mesh (viewport and render)"),
    ("BUMP", "Bump", "Shading only: the skin material's bump, no displaced geometry (fastest)"),
    ("DISPLACEMENT", "Displacement", "Cycles true displacement from the skin material"),
)
_SHADING_NODE = "HiFace Detail Shading"


def set_detail(obj, static: float | None = None, dynamic: float | None = None) -> None:
    """Set the sliders from Python and tag the object (assigning an ID property alone does not
    re-evaluate the drivers)."""
    if static is not None:
        obj[STATIC_PROP] = float(static)
    if dynamic is not None:
        obj[DYNAMIC_PROP] = float(dynamic)
    obj.update_tag()


def is_rigged(obj) -> bool:
    return obj is not None and obj.type == "MESH" and MOD_STATIC in obj.modifiers


# -- Geometry Nodes ---------------------------------------------------------------------------

def tension_node_group() -> bpy.types.NodeTree:
    """The shared tension node group (created once per file, rebuilt if outdated)."""
    ng, current = versioned_group(TENSION_GROUP_NAME, (
        "Per-vertex tension against the rest positions, as compression and stretch weights "
        "in two point attributes"))
    if current:
        return ng
    io = ng.interface
    io.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    float_input(io, "Full Compression", FULL_COMPRESSION, 0.01, 1.0,
                 "Relative shortening of the edges at which the compression weight is 1")
    float_input(io, "Full Stretch", FULL_STRETCH, 0.01, 2.0,
                 "Relative lengthening of the edges at which the stretch weight is 1")
    io.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")

    nodes, links = ng.nodes, ng.links
    node = node_factory(nodes)
    gin = node("NodeGroupInput", -1200, 0)
    gout = node("NodeGroupOutput", 800, 0)
    ev = node("GeometryNodeInputMeshEdgeVertices", -1000, 300)
    rest = node("GeometryNodeInputNamedAttribute", -1000, -100, data_type="FLOAT_VECTOR")
    rest.inputs["Name"].default_value = REST_ATTRIBUTE
    # Rest positions of the edge's two vertices, read on the point domain.
    r1 = node("GeometryNodeFieldAtIndex", -750, -50, domain="POINT", data_type="FLOAT_VECTOR")
    r2 = node("GeometryNodeFieldAtIndex", -750, -250, domain="POINT", data_type="FLOAT_VECTOR")
    for r, i in ((r1, "Vertex Index 1"), (r2, "Vertex Index 2")):
        links.new(rest.outputs["Attribute"], r.inputs["Value"])
        links.new(ev.outputs[i], r.inputs["Index"])
    l_now = node("ShaderNodeVectorMath", -500, 300, operation="DISTANCE")
    links.new(ev.outputs["Position 1"], l_now.inputs[0])
    links.new(ev.outputs["Position 2"], l_now.inputs[1])
    l_rest = node("ShaderNodeVectorMath", -500, -100, operation="DISTANCE")
    links.new(r1.outputs["Value"], l_rest.inputs[0])
    links.new(r2.outputs["Value"], l_rest.inputs[1])
    # (l - l0) / l0; the Math node's division gives 0 for a degenerate rest edge.
    delta = node("ShaderNodeMath", -300, 200, operation="SUBTRACT")
    links.new(l_now.outputs["Value"], delta.inputs[0])
    links.new(l_rest.outputs["Value"], delta.inputs[1])
    rel = node("ShaderNodeMath", -150, 200, operation="DIVIDE")
    links.new(delta.outputs["Value"], rel.inputs[0])
    links.new(l_rest.outputs["Value"], rel.inputs[1])
    # Edge -> point domain interpolation is the mean over the incident edges.
    on_edges = node("GeometryNodeFieldOnDomain", 0, 200, domain="EDGE", data_type="FLOAT")
    links.new(rel.outputs["Value"], on_edges.inputs[0])

    neg = node("ShaderNodeMath", -150, -150, operation="MULTIPLY")
    neg.inputs[1].default_value = -1.0
    links.new(gin.outputs["Full Compression"], neg.inputs[0])
    w_c = node("ShaderNodeMapRange", 200, 250, clamp=True)
    w_c.inputs["From Min"].default_value = 0.0
    links.new(neg.outputs["Value"], w_c.inputs["From Max"])
    w_s = node("ShaderNodeMapRange", 200, -50, clamp=True)
    w_s.inputs["From Min"].default_value = 0.0
    links.new(gin.outputs["Full Stretch"], w_s.inputs["From Max"])
    for w in (w_c, w_s):
        links.new(on_edges.outputs[0], w.inputs["Value"])
        w.inputs["To Min"].default_value, w.inputs["To Max"].default_value = 0.0, 1.0

    prev = gin.outputs["Geometry"]
    for i, (w, name) in enumerate(((w_c, COMPRESSION_ATTRIBUTE), (w_s, STRETCH_ATTRIBUTE))):
        store = node("GeometryNodeStoreNamedAttribute", 450 + 150 * i, 100 - 150 * i,
                     data_type="FLOAT", domain="POINT")
        store.inputs["Name"].default_value = name
        links.new(prev, store.inputs["Geometry"])
        links.new(w.outputs["Result"], store.inputs["Value"])
        prev = store.outputs["Geometry"]
    links.new(prev, gout.inputs["Geometry"])
    return ng


def dynamic_node_group() -> bpy.types.NodeTree:
    """The shared dynamic-detail node group: position += normal x (compressed x compression
    weight x its scale + stretched x stretch weight x its scale) x Amount, the two maps in the
    red and green channels of one image (one sample per point)."""
    ng, current = versioned_group(DYNAMIC_GROUP_NAME,
                                   "Expression wrinkles and smoothing, weighted by the live tension")
    if current:
        return ng
    io = ng.interface
    io.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    io.new_socket("Maps", in_out="INPUT", socket_type="NodeSocketImage").description = \
        "Red: compressed, green: stretched (divided by their scales)"
    for label in ("Compressed Scale", "Stretched Scale"):
        io.new_socket(label, in_out="INPUT", socket_type="NodeSocketFloat").description = \
            "Metres at a map value of 1"
    float_input(io, "Amount", 1.0, 0.0, 2.0, "Dynamic Detail (driven by the object property)")
    io.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")

    nodes, links = ng.nodes, ng.links
    node = node_factory(nodes)
    gin = node("NodeGroupInput", -1200, 0)
    gout = node("NodeGroupOutput", 600, 0)
    uv = node("GeometryNodeInputNamedAttribute", -1000, 300, data_type="FLOAT_VECTOR")
    uv.inputs["Name"].default_value = UV_ATTRIBUTE
    tex = node("GeometryNodeImageTexture", -800, 200, interpolation="Linear", extension="CLIP")
    links.new(gin.outputs["Maps"], tex.inputs["Image"])
    links.new(uv.outputs["Attribute"], tex.inputs["Vector"])
    rgb = node("FunctionNodeSeparateColor", -600, 200)
    links.new(tex.outputs["Color"], rgb.inputs["Color"])
    terms = []
    for i, (channel, scale, weight) in enumerate((("Red", "Compressed Scale",
                                                   COMPRESSION_ATTRIBUTE),
                                                  ("Green", "Stretched Scale",
                                                   STRETCH_ATTRIBUTE))):
        y = 200 - 300 * i
        w = node("GeometryNodeInputNamedAttribute", -600, y - 150, data_type="FLOAT")
        w.inputs["Name"].default_value = weight
        m1 = node("ShaderNodeMath", -350, y, operation="MULTIPLY")
        links.new(rgb.outputs[channel], m1.inputs[0])
        links.new(w.outputs["Attribute"], m1.inputs[1])
        m2 = node("ShaderNodeMath", -200, y, operation="MULTIPLY")
        links.new(m1.outputs[0], m2.inputs[0])
        links.new(gin.outputs[scale], m2.inputs[1])
        terms.append(m2.outputs[0])
    add = node("ShaderNodeMath", -50, 0, operation="ADD")
    links.new(terms[0], add.inputs[0])
    links.new(terms[1], add.inputs[1])
    amt = node("ShaderNodeMath", 100, 0, operation="MULTIPLY")
    links.new(add.outputs[0], amt.inputs[0])
    links.new(gin.outputs["Amount"], amt.inputs[1])
    normal = node("GeometryNodeInputNormal", 100, -200)
    offset = node("ShaderNodeVectorMath", 250, -100, operation="SCALE")
    links.new(normal.outputs["Normal"], offset.inputs[0])
    links.new(amt.outputs[0], offset.inputs["Scale"])
    setp = node("GeometryNodeSetPosition", 420, 0)
    links.new(gin.outputs["Geometry"], setp.inputs["Geometry"])
    links.new(offset.outputs["Vector"], setp.inputs["Offset"])
    links.new(setp.outputs["Geometry"], gout.inputs["Geometry"])
    return ng


# -- images -----------------------------------------------------------------------------------

def _map_image(name: str, maps) -> tuple[bpy.types.Image, list[float]]:
    """A packed float image holding up to three maps, each divided by its largest magnitude,
    in the red, green and blue channels (rows flipped: Blender stores bottom-up)."""
    maps = [np.asarray(m, np.float32) for m in maps]
    s = maps[0].shape[0]
    for m in maps:
        if m.shape != (s, s):
            raise ValueError(f"detail maps must be square and of one size, got {m.shape}")
    img = bpy.data.images.new(name, s, s, alpha=False, float_buffer=True, is_data=True)
    scales = []
    try:
        img.colorspace_settings.is_data = True
        px = np.zeros((s, s, 4), np.float32)
        for c, m in enumerate(maps):
            scale = float(max(np.abs(m).max(), 1e-9))
            px[..., c] = m[::-1] / scale
            scales.append(scale)
        if len(maps) == 1:
            px[..., 1] = px[..., 2] = px[..., 0]
        px[..., 3] = 1.0
        img.pixels.foreach_set(px.ravel())
        img.pack()
    except Exception:
        bpy.data.images.remove(img)
        raise
    img["hiface_scale_m"] = scales
    return img, scales


def face_uv_per_vertex(obj) -> np.ndarray:
    """(V, 2) one UV per vertex, from a corner of the skin (M_Face) material, (-1, -1) for
    vertices with none: the subdivision interpolates it, and (-1, -1) keeps the points between
    the face and other parts outside the map (Clip extension: no offset)."""
    me = obj.data
    skin = {i for i, s in enumerate(obj.material_slots)
            if s.material is not None and s.material.get("hiface_ict_material") == "M_Face"}
    n_loops = len(me.loops)
    loop_vert = np.empty(n_loops, np.int32)
    me.loops.foreach_get("vertex_index", loop_vert)
    uv = np.empty(n_loops * 2, np.float32)
    me.uv_layers[0].uv.foreach_get("vector", uv)
    mat = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("material_index", mat)
    start = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("loop_start", start)
    total = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("loop_total", total)
    loop_mat = np.repeat(mat, total)
    on_skin = np.isin(loop_mat, list(skin)) if skin else np.zeros(n_loops, bool)
    out = np.full((len(me.vertices), 2), -1.0, np.float32)
    out[loop_vert[on_skin]] = uv.reshape(-1, 2)[on_skin]
    return out


def _texture(name: str, image: bpy.types.Image) -> bpy.types.Texture:
    tex = bpy.data.textures.new(name, "IMAGE")
    tex.image = image
    tex.extension = "CLIP"       # 0 outside the face tile: other parts are left alone
    tex.use_clamp = False        # keep the negative half of the relief
    tex.use_interpolation = True
    tex.use_mipmap = False
    return tex


# -- rig --------------------------------------------------------------------------------------

def _add_property(obj, name: str, description: str) -> None:
    obj[name] = 1.0
    obj.id_properties_ui(name).update(min=0.0, max=2.0, soft_min=0.0, soft_max=2.0,
                                      default=1.0, precision=2, step=1, description=description)
    obj.property_overridable_library_set(f'["{name}"]', True)


def _drive(owner, path: str, obj, prop: str, factor: float) -> None:
    add_driver(owner, path, f"amount * {factor:.9g}",
               [("amount", "OBJECT", obj, f'["{prop}"]')])


def add_detail_rig(obj, static: np.ndarray, compressed: np.ndarray, stretched: np.ndarray, *,
                   viewport_levels: int = 1, render_levels: int = 2,
                   material: bpy.types.Material | None = None) -> None:
    """Give a HiFace object the detail rig for these maps (metres, ICT UV layout, row 0 = v 1).
    The material (default: the object's skin, ICT M_Face) gets the bump / displacement nodes."""
    if obj.data.shape_keys is None:
        raise ValueError(f"{obj.name} has no shape keys (not a HiFace face?)")
    if is_rigged(obj):
        remove_detail_rig(obj)
    me = obj.data
    n = len(me.vertices)
    rest = np.empty(n * 3, np.float32)
    me.shape_keys.reference_key.data.foreach_get("co", rest)
    attr = me.attributes.get(REST_ATTRIBUTE) or me.attributes.new(REST_ATTRIBUTE, "FLOAT_VECTOR",
                                                                    "POINT")
    attr.data.foreach_set("vector", rest)

    uv = me.attributes.get(UV_ATTRIBUTE) or me.attributes.new(UV_ATTRIBUTE, "FLOAT2", "POINT")
    uv.data.foreach_set("vector", face_uv_per_vertex(obj).ravel())

    static_img, (static_scale,) = _map_image(f"{obj.name} Detail Static", [static])
    dynamic_img, dyn_scales = _map_image(f"{obj.name} Detail Dynamic", [compressed, stretched])
    scales = [static_scale, *dyn_scales]
    obj[SCALE_PROP] = scales

    _add_property(obj, STATIC_PROP, "Strength of the person's own fine relief (static map)")
    _add_property(obj, DYNAMIC_PROP,
                  "Strength of the expression wrinkles and smoothing (tension-weighted maps)")

    gn = obj.modifiers.new(MOD_TENSION, "NODES")
    gn.node_group = tension_node_group()
    sub = obj.modifiers.new(MOD_SUBSURF, "SUBSURF")
    sub.levels, sub.render_levels = int(viewport_levels), int(render_levels)
    sub.quality = 3
    mod = obj.modifiers.new(MOD_STATIC, "DISPLACE")
    mod.texture = _texture(static_img.name, static_img)
    mod.texture_coords = "UV"
    mod.uv_layer = me.uv_layers[0].name
    mod.direction = "NORMAL"
    mod.space = "LOCAL"
    mod.mid_level = 0.0
    mod.strength = scales[0]
    _drive(obj, f'modifiers["{MOD_STATIC}"].strength', obj, STATIC_PROP, scales[0])

    dyn = obj.modifiers.new(MOD_DYNAMIC, "NODES")
    group = dyn.node_group = dynamic_node_group()
    for name, value in (("Maps", dynamic_img), ("Compressed Scale", scales[1]),
                        ("Stretched Scale", scales[2])):
        dyn[socket_id(group, name)] = value
    amount = socket_id(group, "Amount")
    dyn[amount] = 1.0
    _drive(obj, f'modifiers["{MOD_DYNAMIC}"]["{amount}"]', obj, DYNAMIC_PROP, 1.0)

    mat = material if material is not None else skin_material(obj)
    if mat is not None:
        add_detail_shading(mat, static_img, dynamic_img, scales)
    obj[MODE_PROP] = "MODIFIERS"
    set_detail_mode(obj, "MODIFIERS")


def skin_material(obj):
    for slot in obj.material_slots:
        if slot.material is not None and slot.material.get("hiface_ict_material") == "M_Face":
            return slot.material
    return None


def static_image(obj):
    """The static map's image of a rigged face (None when there is none)."""
    mod = obj.modifiers.get(MOD_STATIC)
    tex = getattr(mod, "texture", None)
    return getattr(tex, "image", None)


def dynamic_image(obj):
    """The compressed / stretched maps' image of a rigged face (None when there is none)."""
    mod = obj.modifiers.get(MOD_DYNAMIC)
    if mod is None or mod.node_group is None:
        return None
    try:
        img = mod[socket_id(mod.node_group, "Maps")]
    except (KeyError, StopIteration):
        return None
    return img if isinstance(img, bpy.types.Image) else None


def detail_maps(obj) -> dict[str, np.ndarray]:
    """The face's static, compressed and stretched maps in metres, row 0 = v 1 (as the engine
    wrote them), read back from its images and scales. ValueError when the face has no rig."""
    static, dynamic = static_image(obj), dynamic_image(obj)
    scales = obj.get(SCALE_PROP)
    if static is None or dynamic is None or scales is None or len(scales) != 3:
        raise ValueError(f"{obj.name} has no detail maps")

    def channels(img):
        w, h = img.size
        px = np.empty(w * h * 4, np.float32)
        img.pixels.foreach_get(px)
        return px.reshape(h, w, 4)[::-1]

    st, dy = channels(static), channels(dynamic)
    return {"static": st[..., 0] * float(scales[0]),
            "compressed": dy[..., 0] * float(scales[1]),
            "stretched": dy[..., 1] * float(scales[2])}


def export_detail_maps(obj, folder, fmt: str = "png", *, overwrite: bool = False) -> list[Path]:
    """Write the face's maps as `<object>_detail_<map>.png` (16-bit, scale in the file) or
    `.exr` (float metres, with a .json) into folder. Without overwrite, existing files are an
    error and nothing is written."""
    from ..core.detail import detail_map_files, save_detail_maps

    prefix = f"{bpy.path.clean_name(obj.name)}_"
    names = detail_map_files(fmt, prefix)
    maps = detail_maps(obj)
    folder = Path(folder)
    taken = [n for n in names if (folder / n).exists()]
    if taken and not overwrite:
        raise ValueError(f"{taken[0]} already exists in {folder} (turn on Overwrite)")
    folder.mkdir(parents=True, exist_ok=True)
    written = save_detail_maps(maps, folder, fmt, prefix)
    return [folder / w["file"] for w in written.values()]


def remove_detail_rig(obj) -> None:
    """Remove the modifiers, their drivers and the material nodes (the images stay while
    anything else uses them)."""
    if obj.animation_data is not None:
        for fc in [fc for fc in obj.animation_data.drivers
                   if any(f'modifiers["{n}"]' in fc.data_path for n in RIG_MODIFIERS)]:
            obj.animation_data.drivers.remove(fc)
    for name in RIG_MODIFIERS:
        mod = obj.modifiers.get(name)
        if mod is None:
            continue
        tex = getattr(mod, "texture", None)
        obj.modifiers.remove(mod)
        if tex is not None and tex.users == 0:
            bpy.data.textures.remove(tex)
    mat = skin_material(obj)
    if mat is not None and mat.node_tree is not None:
        nodes = mat.node_tree.nodes
        for n in [n for n in nodes if n.get("hiface_detail")]:
            nodes.remove(n)
    for key in (SCALE_PROP, MODE_PROP):
        if key in obj:
            del obj[key]


# -- material ---------------------------------------------------------------------------------

def add_detail_shading(mat: bpy.types.Material, static_img, dynamic_img, scales) -> None:
    """Height (metres) = static x Static Detail + (compressed x compression weight + stretched
    x stretch weight) x Dynamic Detail, into the material output's Displacement through a
    Displacement node (object space). The sliders are read from the object with Attribute
    nodes, so one material serves any object that carries the properties."""
    nt = mat.node_tree
    nodes, links = nt.nodes, nt.links
    for n in [n for n in nodes if n.get("hiface_detail")]:
        nodes.remove(n)
    out = next((n for n in nodes if n.bl_idname == "ShaderNodeOutputMaterial"
                and n.is_active_output), None) or \
        next(n for n in nodes if n.bl_idname == "ShaderNodeOutputMaterial")
    x0, y0 = out.location.x - 1600, out.location.y - 600

    def node(kind, x, y, **props):
        n = nodes.new(kind)
        n.location = (x0 + x, y0 + y)
        n["hiface_detail"] = 1
        for k, v in props.items():
            setattr(n, k, v)
        return n

    def math(op, a, b, x, y):
        m = node("ShaderNodeMath", x, y, operation=op)
        for sock, v in ((m.inputs[0], a), (m.inputs[1], b)):
            if isinstance(v, (int, float)):
                sock.default_value = float(v)
            else:
                links.new(v, sock)
        return m.outputs[0]

    uv = node("ShaderNodeUVMap", 0, 0, uv_map="UVMap")
    tex_s = node("ShaderNodeTexImage", 200, 0, image=static_img, interpolation="Cubic",
                 extension="CLIP", label="Static detail")
    tex_d = node("ShaderNodeTexImage", 200, -300, image=dynamic_img, interpolation="Cubic",
                 extension="CLIP", label="Dynamic detail")
    for tex in (tex_s, tex_d):
        links.new(uv.outputs["UV"], tex.inputs["Vector"])
    rgb = node("ShaderNodeSeparateColor", 450, -300)
    links.new(tex_d.outputs["Color"], rgb.inputs["Color"])
    terms = [math("MULTIPLY", tex_s.outputs["Color"], scales[0], 500, 0)]
    for i, (channel, scale, weight) in enumerate((("Red", scales[1], COMPRESSION_ATTRIBUTE),
                                                  ("Green", scales[2], STRETCH_ATTRIBUTE))):
        y = -260 * (i + 1)
        w = node("ShaderNodeAttribute", 500, y - 120, attribute_type="GEOMETRY",
                 attribute_name=weight)
        h = math("MULTIPLY", rgb.outputs[channel], scale, 650, y)
        terms.append(math("MULTIPLY", h, w.outputs["Fac"], 800, y))
    static = node("ShaderNodeAttribute", 700, 200, attribute_type="OBJECT",
                  attribute_name=STATIC_PROP)
    dynamic = node("ShaderNodeAttribute", 900, 200, attribute_type="OBJECT",
                   attribute_name=DYNAMIC_PROP)
    h_static = math("MULTIPLY", terms[0], static.outputs["Fac"], 900, 0)
    h_dyn = math("MULTIPLY", math("ADD", terms[1], terms[2], 900, -300), dynamic.outputs["Fac"],
                 1050, -300)
    height = math("ADD", h_static, h_dyn, 1200, 0)
    # 0 when the modifiers carry the detail, 1 for bump / true displacement.
    shading = node("ShaderNodeValue", 1200, 200, label=_SHADING_NODE)
    shading.name = _SHADING_NODE
    shading.outputs[0].default_value = 0.0
    height = math("MULTIPLY", height, shading.outputs[0], 1350, 0)
    disp = node("ShaderNodeDisplacement", 1500, 0, space="OBJECT")
    disp.inputs["Midlevel"].default_value = 0.0
    disp.inputs["Scale"].default_value = 1.0
    links.new(height, disp.inputs["Height"])
    links.new(disp.outputs["Displacement"], out.inputs["Displacement"])


def set_detail_mode(obj, mode: str) -> None:
    """MODIFIERS: displaced geometry; BUMP: skin material bump only; DISPLACEMENT: Cycles true
    displacement by the skin material (on the render-level subdivision)."""
    if mode not in {m[0] for m in MODES}:
        raise ValueError(f"unknown detail mode {mode!r}")
    geometry = mode == "MODIFIERS"
    for name in DISPLACE_MODIFIERS:
        mod = obj.modifiers.get(name)
        if mod is not None:
            mod.show_viewport = mod.show_render = geometry
    obj[MODE_PROP] = mode
    mat = skin_material(obj)
    if mat is None or mat.node_tree is None:
        return
    value = mat.node_tree.nodes.get(_SHADING_NODE)
    if value is not None:
        value.outputs[0].default_value = 0.0 if geometry else 1.0
    mat.displacement_method = "DISPLACEMENT" if mode == "DISPLACEMENT" else "BUMP"


# -- playback cost ----------------------------------------------------------------------------

def animate_for_bench(obj, frames: int, *, seed: int = 0, step: int = 4) -> None:
    """Keyframe every expression key with smooth random values (a retargeted-clip stand-in)."""
    rng = np.random.default_rng(seed)
    keys = obj.data.shape_keys
    times = np.arange(1, frames + step + 1, step, dtype=np.float32)
    for kb in keys.key_blocks[1:]:
        # keyframe_insert makes the action, its slot and the F-Curve the way the UI does.
        kb.value = 0.0
        kb.keyframe_insert("value", frame=1)
    action = keys.animation_data.action
    for kb in keys.key_blocks[1:]:
        curve = action.fcurves.find(f'key_blocks["{kb.name}"].value')
        values = np.clip(rng.normal(0.0, 0.35, len(times)), 0.0, 1.0).astype(np.float32)
        curve.keyframe_points.clear()
        curve.keyframe_points.add(len(times))
        curve.keyframe_points.foreach_set("co", np.c_[times, values].ravel())
        curve.keyframe_points.foreach_set("interpolation", np.full(len(times), 2, np.int32))
        curve.update()


def _time_frames(scene, frames: int) -> float:
    import time

    scene.frame_set(1)
    t = time.perf_counter()
    for f in range(1, frames + 1):
        scene.frame_set(f)
    return time.perf_counter() - t


def bench_playback(result, model, *, frames: int = 100, repeats: int = 5,
                   viewport_levels: int = 1) -> dict:
    """Seconds to play `frames` frames of an animated face (scene.frame_set, which evaluates
    the depsgraph) with the full rig and with the same rig less its dynamic part (tension and
    the two dynamic displaces), alternated, median of `repeats`. Works in the current file:
    creates one face and removes it afterwards."""
    from .build import build_face_object

    scene = bpy.context.scene
    obj = build_face_object(result, model, name="HiFace Bench")
    try:
        add_detail_rig(obj, result.detail_static, result.detail_compressed,
                       result.detail_stretched, viewport_levels=viewport_levels)
        animate_for_bench(obj, frames)
        dynamic = [obj.modifiers[n] for n in DYNAMIC_MODIFIERS]
        _time_frames(scene, min(frames, 10))           # warm caches (images, OpenSubdiv)
        full, static = [], []
        for _ in range(repeats):
            for m in dynamic:
                m.show_viewport = True
            full.append(_time_frames(scene, frames))
            for m in dynamic:
                m.show_viewport = False
            static.append(_time_frames(scene, frames))
        full_s, static_s = float(np.median(full)), float(np.median(static))
        return {"frames": frames, "repeats": repeats, "viewport_levels": viewport_levels,
                "vertices": len(obj.data.vertices), "full_s": full_s, "static_s": static_s,
                "ratio": full_s / static_s, "full_runs_s": full, "static_runs_s": static,
                "ms_per_frame_full": 1e3 * full_s / frames,
                "ms_per_frame_static": 1e3 * static_s / frames}
    finally:
        keys = obj.data.shape_keys
        action = keys.animation_data.action if keys and keys.animation_data else None
        remove_detail_rig(obj)
        mesh = obj.data
        mats = list(mesh.materials)
        bpy.data.objects.remove(obj)
        bpy.data.meshes.remove(mesh)
        for m in mats:
            if m is not None and m.users == 0:
                bpy.data.materials.remove(m)
        for img in [i for i in bpy.data.images if i.name.startswith("HiFace Bench") and i.users == 0]:
            bpy.data.images.remove(img)
        if action is not None and action.users == 0:
            bpy.data.actions.remove(action)

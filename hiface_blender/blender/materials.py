"""Materials for a HiFace object, one per ICT material slot. Principled BSDF based, so they
render in Cycles and EEVEE alike; only the skin depends on the photo."""
from __future__ import annotations

import bpy
import numpy as np

# Point attribute holding, on the eyeballs, the distance from the eye's optical axis as a
# fraction of the eyeball's radius (0 at the pupil centre, 1 at the rim, 2 behind the eye).
# The inner ball ("iris" material) draws pupil, iris and sclera from it; the outer shell
# ("sclera" material) turns clear (cornea) inside the limbus.
EYE_ATTRIBUTE = "hiface_eye"
# Limbus (iris edge) on that scale: a human iris is about 12 mm across on a ~24 mm eyeball;
# ICT's inner ball is a little larger than life, hence a bit under 0.5.
EYE_LIMBUS = 0.40
_SCLERA_RGB = (0.78, 0.74, 0.70)

_SKIN_SSS_RADIUS = (1.0, 0.25, 0.12)   # red light travels furthest in skin
_SKIN_SSS_SCALE = 0.004                # metres: a few millimetres of scattering


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def image_from_rgb(name: str, rgb: np.ndarray, *, pack: bool = True) -> bpy.types.Image:
    """A byte (sRGB) image from an HxWx3 uint8 array whose first row is the top of the picture."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 array, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    img = bpy.data.images.new(name, w, h, alpha=False)
    try:
        rgba = np.empty((h, w, 4), np.float32)
        rgba[..., :3] = rgb[::-1]           # Blender stores rows bottom-up
        rgba[..., :3] *= 1.0 / 255.0
        rgba[..., 3] = 1.0
        img.pixels.foreach_set(rgba.ravel())
        if pack:
            img.pack()                      # the .blend stays self-contained
    except Exception:
        bpy.data.images.remove(img)
        raise
    return img


def skin_colour(texture: np.ndarray, mask: np.ndarray | None) -> tuple[float, float, float]:
    """Median linear colour of the texels actually seen in the photo (for the back of the head)."""
    tex = np.asarray(texture).reshape(-1, 3)
    if mask is not None and np.asarray(mask).size == tex.shape[0]:
        seen = np.asarray(mask).reshape(-1) > 127
        if seen.sum() > 100:
            tex = tex[seen]
    if tex.shape[0] == 0:
        return (0.6, 0.45, 0.38)
    return tuple(float(x) for x in srgb_to_linear(np.median(tex, axis=0) / 255.0))


class _Tree:
    """Small helper to lay out node trees readably."""

    def __init__(self, mat: bpy.types.Material):
        mat.use_nodes = True
        self.nodes = mat.node_tree.nodes
        self.links = mat.node_tree.links
        self.nodes.clear()
        self.out = self.new("ShaderNodeOutputMaterial", 400, 0)

    def new(self, kind: str, x: float, y: float, **props):
        n = self.nodes.new(kind)
        n.location = (x, y)
        for k, v in props.items():
            setattr(n, k, v)
        return n

    def link(self, a, b):
        self.links.new(a, b)

    def principled(self, x=0, y=0, **inputs):
        p = self.new("ShaderNodeBsdfPrincipled", x, y)
        for k, v in inputs.items():
            p.inputs[k].default_value = v
        return p


def _new_material(name: str, viewport: tuple[float, float, float]) -> tuple[bpy.types.Material, _Tree]:
    mat = bpy.data.materials.new(name)
    mat.diffuse_color = (*viewport, 1.0)
    return mat, _Tree(mat)


def _skin(name, base_color_socket_fn, viewport):
    mat, t = _new_material(name, viewport)
    p = t.principled(0, 0, **{
        "Roughness": 0.45, "IOR": 1.4, "Specular IOR Level": 0.5,
        "Subsurface Weight": 1.0, "Subsurface Radius": _SKIN_SSS_RADIUS,
        "Subsurface Scale": _SKIN_SSS_SCALE,
    })
    p.subsurface_method = "RANDOM_WALK_SKIN"
    base_color_socket_fn(t, p.inputs["Base Color"])
    t.link(p.outputs["BSDF"], t.out.inputs["Surface"])
    return mat


def _solid(name, color, viewport=None, *, roughness=0.5, sss=0.0, sss_scale=0.002,
           coat=0.0, specular=0.5):
    mat, t = _new_material(name, viewport or tuple(color))
    p = t.principled(0, 0, **{
        "Base Color": (*color, 1.0), "Roughness": roughness, "Specular IOR Level": specular,
        "Subsurface Weight": sss, "Subsurface Scale": sss_scale,
        "Coat Weight": coat, "Coat Roughness": 0.03,
    })
    t.link(p.outputs["BSDF"], t.out.inputs["Surface"])
    return mat


def _film(name, color, opacity, viewport, *, glossy=False, edge_on=False):
    """A mostly transparent layer: wet film (glossy by Fresnel) or a soft shadow/blend.
    edge_on: `opacity` only where seen edge-on, as a card of sparse strands looks."""
    mat, t = _new_material(name, viewport)
    transparent = t.new("ShaderNodeBsdfTransparent", -200, 100)
    mix = t.new("ShaderNodeMixShader", 200, 0)
    if glossy:
        surface = t.new("ShaderNodeBsdfGlossy", -200, -100)
        surface.inputs["Roughness"].default_value = 0.02
        fresnel = t.new("ShaderNodeFresnel", -200, 250)
        fresnel.inputs["IOR"].default_value = 1.33
        t.link(fresnel.outputs["Fac"], mix.inputs["Fac"])
    else:
        surface = t.new("ShaderNodeBsdfDiffuse", -200, -100)
        surface.inputs["Color"].default_value = (*color, 1.0)
        mix.inputs["Fac"].default_value = opacity
        if edge_on:
            facing = t.new("ShaderNodeLayerWeight", -400, 250)
            scale = t.new("ShaderNodeMath", -200, 250, operation="MULTIPLY")
            scale.inputs[1].default_value = opacity
            t.link(facing.outputs["Facing"], scale.inputs[0])
            t.link(scale.outputs["Value"], mix.inputs["Fac"])
    t.link(transparent.outputs["BSDF"], mix.inputs[1])
    t.link(surface.outputs["BSDF"], mix.inputs[2])
    t.link(mix.outputs["Shader"], t.out.inputs["Surface"])
    return mat


# Linear colour of the iris where none was measured in the photo: a mid brown.
DEFAULT_IRIS = (0.16, 0.085, 0.035)


def _iris(name, iris: tuple[float, float, float] = DEFAULT_IRIS):
    """`iris`: the linear colour of the iris's middle; the inner iris is darker and the limbal
    ring darker still, in the same hue."""
    iris = tuple(float(c) for c in iris)
    mat, t = _new_material(name, tuple(0.75 * c for c in iris))
    attr = t.new("ShaderNodeAttribute", -600, 0, attribute_name=EYE_ATTRIBUTE)
    ramp = t.new("ShaderNodeValToRGB", -350, 0)
    els = ramp.color_ramp.elements
    # Positions as fractions of the limbus radius: pupil, iris, dark limbal ring, sclera.
    stops = [(0.0, (0.004, 0.004, 0.004)), (0.30, (0.004, 0.004, 0.004)),
             (0.36, tuple(0.56 * c for c in iris)), (0.75, iris),
             (0.95, tuple(0.19 * c for c in iris)), (1.06, _SCLERA_RGB)]
    stops = [(pos * EYE_LIMBUS, col) for pos, col in stops]
    els[0].position, els[0].color = stops[0][0], (*stops[0][1], 1.0)
    els[1].position, els[1].color = stops[-1][0], (*stops[-1][1], 1.0)
    for pos, col in stops[1:-1]:
        e = els.new(pos)
        e.color = (*col, 1.0)
    p = t.principled(0, 0, **{"Roughness": 0.3, "Coat Weight": 1.0, "Coat Roughness": 0.02,
                              "Coat IOR": 1.376})
    t.link(attr.outputs["Fac"], ramp.inputs["Fac"])
    t.link(ramp.outputs["Color"], p.inputs["Base Color"])
    t.link(p.outputs["BSDF"], t.out.inputs["Surface"])
    return mat


def _sclera(name):
    mat, t = _new_material(name, _SCLERA_RGB)
    attr = t.new("ShaderNodeAttribute", -800, 200, attribute_name=EYE_ATTRIBUTE)
    ramp = t.new("ShaderNodeMapRange", -550, 200)
    ramp.inputs["From Min"].default_value = 0.97 * EYE_LIMBUS  # clear cornea inside the limbus
    ramp.inputs["From Max"].default_value = 1.08 * EYE_LIMBUS  # white sclera just outside it
    sclera = t.principled(-250, -150, **{
        "Base Color": (*_SCLERA_RGB, 1.0), "Roughness": 0.35, "Subsurface Weight": 0.3,
        "Subsurface Scale": 0.002, "Coat Weight": 1.0, "Coat Roughness": 0.03})
    clear = t.new("ShaderNodeBsdfTransparent", -250, 350)
    glossy = t.new("ShaderNodeBsdfGlossy", -250, 250)
    glossy.inputs["Roughness"].default_value = 0.02
    fresnel = t.new("ShaderNodeFresnel", -250, 500)
    fresnel.inputs["IOR"].default_value = 1.376
    cornea = t.new("ShaderNodeMixShader", 0, 350)
    t.link(fresnel.outputs["Fac"], cornea.inputs["Fac"])
    t.link(clear.outputs["BSDF"], cornea.inputs[1])
    t.link(glossy.outputs["BSDF"], cornea.inputs[2])
    mix = t.new("ShaderNodeMixShader", 200, 0)
    t.link(attr.outputs["Fac"], ramp.inputs["Value"])
    t.link(ramp.outputs["Result"], mix.inputs["Fac"])
    t.link(cornea.outputs["Shader"], mix.inputs[1])
    t.link(sclera.outputs["BSDF"], mix.inputs[2])
    t.link(mix.outputs["Shader"], t.out.inputs["Surface"])
    return mat


def iris_linear(iris_rgb) -> tuple[float, float, float]:
    """The iris colour measured in the photo (sRGB 0..1, core.iris) as the material's linear
    colour; the default brown when none was measured."""
    c = np.asarray(iris_rgb, np.float64).ravel()
    if c.size != 3 or not np.all(np.isfinite(c)):
        return DEFAULT_IRIS
    return tuple(float(x) for x in srgb_to_linear(np.clip(c, 0.0, 1.0)))


def make_materials(prefix: str, material_names, texture_image: bpy.types.Image | None,
                   skin_rgb: tuple[float, float, float],
                   iris: tuple[float, float, float] = DEFAULT_IRIS) -> list[bpy.types.Material]:
    """One material per ICT material name, in that order; `iris` the irises' linear colour."""
    skin_view = tuple(min(1.0, c * 1.2) for c in skin_rgb)

    def photo(t, socket):
        tex = t.new("ShaderNodeTexImage", -400, 0, image=texture_image)
        uv = t.new("ShaderNodeUVMap", -650, 0, uv_map="UVMap")
        t.link(uv.outputs["UV"], tex.inputs["Vector"])
        t.link(tex.outputs["Color"], socket)

    def flat(t, socket):
        socket.default_value = (*skin_rgb, 1.0)

    recipes = {
        "M_Face": lambda n: _skin(n, photo if texture_image is not None else flat, skin_view),
        "M_BackHead": lambda n: _skin(n, flat, skin_view),
        "M_GumsTongue": lambda n: _solid(n, (0.42, 0.08, 0.08), roughness=0.35, sss=1.0),
        "M_Teeth": lambda n: _solid(n, (0.72, 0.66, 0.54), roughness=0.2, sss=0.3,
                                    sss_scale=0.001, coat=0.3),
        "M_ScleraLeft": _sclera,
        "M_IrisLeft": lambda n: _iris(n, iris),
        "M_LacrimalFluid": lambda n: _film(n, (1.0, 1.0, 1.0), 0.0, (0.9, 0.8, 0.8),
                                           glossy=True),
        "M_EyeBlend": lambda n: _film(n, skin_rgb, 0.1, skin_view),
        "M_EyeOcclusion": lambda n: _film(n, (0.0, 0.0, 0.0), 0.2, (0.2, 0.15, 0.15)),
        # ICT's lashes are cards meant for a strand texture: a translucent fringe instead,
        # faint face-on so the lower lash cards do not shade the eye and cheek.
        "M_EyeLashes": lambda n: _film(n, (0.012, 0.009, 0.007), 0.6, (0.05, 0.04, 0.03),
                                       edge_on=True),
    }
    recipes["M_ScleraRight"] = recipes["M_ScleraLeft"]
    recipes["M_IrisRight"] = recipes["M_IrisLeft"]

    labels = {"M_Face": "Skin", "M_BackHead": "Scalp"}
    mats = []
    for ict_name in (str(n) for n in material_names):
        label = labels.get(ict_name, ict_name[2:] if ict_name.startswith("M_") else ict_name)
        make = recipes.get(ict_name, lambda n: _solid(n, (0.5, 0.5, 0.5)))
        mat = make(f"{prefix} {label}")
        mat["hiface_ict_material"] = ict_name
        mats.append(mat)
    return mats

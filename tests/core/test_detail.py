"""Static and dynamic detail against a synthetic truth: an ICT face with a known displacement map
(wrinkles and pores of several sizes) and drawn pigment spots with no relief, rendered in linear
light with per-pixel bump-mapped normals under a known directional + ambient light, with the
astronaut-derived skin texture."""
from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest

from hiface_blender.core.detail import (
    DetailSettings, compute_detail, load_displacement, log_colour_split, relief_gain,
    save_displacement, solve_directional, srgb_to_linear, static_detail, texel_geometry,
    texel_jacobians, weighted_blur)
from hiface_blender.core.raster import rasterize
from hiface_blender.core.result import posed_vertices
from hiface_blender.core.synthetic import (
    _tables, astronaut_skin_texture, camera_vertices, render_face, rotation_ypr)
from hiface_blender.core.texture import extract_texture, uv_raster

SIZE = 1024
# (towards the light in camera axes (y down, z forward), ambient, diffuse). The main scene's
# light is mostly frontal, the hardest case for shape from shading: where the skin faces the light
# squarely, relief changes the shading least.
FRONT = (np.array([-0.45, -0.5, -1.0]), 0.35, 0.75)
OTHER_LIGHTS = {"side": (np.array([-0.9, -0.35, -0.45]), 0.2, 0.9),     # grazing the far cheek
                "top": (np.array([0.2, -0.9, -0.6]), 0.25, 0.85)}       # overhead, a little right


def _band(rng, size, wavelength_tex, angle=None, aniso=1.0):
    """Unit-std band-limited noise; with an angle, elongated across it (wrinkle-like lines)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f0 = 1.0 / wavelength_tex
    if angle is None:
        g = np.exp(-0.5 * ((np.hypot(fx, fy) - f0) / (0.35 * f0)) ** 2)
    else:
        ca, sa = np.cos(angle), np.sin(angle)
        a, b = fx * ca + fy * sa, -fx * sa + fy * ca
        g = (np.exp(-0.5 * ((np.abs(a) - f0) / (0.3 * f0)) ** 2)
             * np.exp(-0.5 * (b / (0.3 * f0 / aniso)) ** 2))
    n = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * g, s=(size, size))
    return (n / n.std()).astype(np.float32)


def truth_displacement(size=SIZE, seed=1):
    """Metres: horizontal forehead-like lines (7 mm apart), creases of every orientation
    (3.5 mm), 1.6 mm bumps and 0.6 mm pores (dimples), everywhere on the tile. Orientations other
    than the lines' are isotropic so that no family is favoured or hidden by the light."""
    rng = np.random.default_rng(seed)
    mpt = 0.29e-3 * 1024 / size
    d = 0.00010 * _band(rng, size, 7e-3 / mpt, angle=np.pi / 2, aniso=4)       # 7 mm lines
    d += 0.00007 * _band(rng, size, 3.5e-3 / mpt)                               # 3.5 mm creases
    d += 0.00004 * _band(rng, size, 1.6e-3 / mpt)                               # bumps
    pores = np.zeros((size, size), np.float32)
    n = int(0.004 * size * size / 100)
    ys, xs = rng.integers(0, size, n), rng.integers(0, size, n)
    pores[ys, xs] = 1.0
    r = 0.35e-3 / mpt
    pores = cv2.GaussianBlur(pores, (0, 0), r) * (2 * np.pi * r * r)
    d -= 0.00004 * pores
    return d.astype(np.float32)


def _to_srgb8(lin):
    out = np.where(lin <= 0.0031308, lin * 12.92, 1.055 * np.power(np.maximum(lin, 0), 1 / 2.4) - 0.055)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def truth_albedo(model, skin):
    """The astronaut-derived texture as an albedo: a texture unwrapped from a photo carries that
    photo's shading (her own folds, a side light), which is relief and lighting, not albedo, and
    would be a second, unknown relief in the truth. De-light it: average each texel with its
    mirror (the side light) and remove the colourless part of its fine log luminance (her folds).
    Pigment darkens as it colours (melanin, blood, hair): the part of the fine luminance that goes
    with the fine chromaticity (one linear relation over the face tile) stays, so brows, lips and
    skin tone keep their darkness with their colour."""
    from hiface_blender.core.texture import mirror_maps

    size = skin.shape[0]
    lin = srgb_to_linear(skin)
    mx, my = mirror_maps(model, size)
    mir = cv2.remap(lin, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    lin = np.where((mx >= 0)[..., None], 0.5 * (lin + mir), lin)
    log = np.log(lin + 1e-4)
    fine = log - cv2.GaussianBlur(log, (0, 0), 10.0)
    lum, chroma = log_colour_split(fine)
    tile = uv_raster(model, size)[0] >= 0
    pigment = np.linalg.lstsq(chroma[tile], lum[tile], rcond=None)[0]
    colourless = lum - chroma @ pigment
    return _to_srgb8(lin * np.exp(-colourless)[..., None])


def draw_spots(texture, seed=2, n=40):
    """Freckle/mole-like pigment spots (melanin darkens blue most): albedo only. Returns the
    texture and the spot mask in texture texels."""
    rng = np.random.default_rng(seed)
    size = texture.shape[0]
    tid, _ = uv_raster_cached(size)
    mask = np.zeros((size, size), np.float32)
    ys, xs = np.nonzero(tid >= 0)
    # Spots on the cheeks and forehead region of the tile, not on eyes or lips.
    keep = ((ys > 0.12 * size) & (ys < 0.45 * size) & (np.abs(xs - size / 2) > 0.08 * size)
            & (np.abs(xs - size / 2) < 0.3 * size))
    pick = rng.choice(np.nonzero(keep)[0], n, replace=False)
    for y, x in zip(ys[pick], xs[pick]):
        cv2.circle(mask, (int(x), int(y)), int(rng.integers(4, 9) * size / 1024), 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 1.0 * size / 1024)
    lin = srgb_to_linear(texture)
    dark = np.array([0.55, 0.42, 0.32], np.float32)
    lin = lin * (1 - mask[..., None] + mask[..., None] * dark)
    return _to_srgb8(lin), mask > 0.5


_UV = {}


def _sample(img, col, row):
    """Bilinear lookup at texel coordinates (centres at integers) of n points."""
    n = len(col)
    k = -(-n // 1024) * 1024
    mx = np.full(k, -1, np.float32)
    my = np.full(k, -1, np.float32)
    mx[:n], my[:n] = col, row
    out = cv2.remap(img, mx.reshape(-1, 1024), my.reshape(-1, 1024), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return out.reshape((k,) + img.shape[2:])[:n]


def uv_raster_cached(size):
    return _UV[size]


def render_detailed(model, identity, expression, rotation, translation, K, size, texture, disp,
                    ss=2, light=FRONT):
    """Linear-light render: albedo from the sRGB texture, bump-mapped normals from `disp`
    (metres), Lambert + ambient under `light`; other parts from render_face."""
    h, w = size
    K2 = np.asarray(K, np.float64).copy()
    K2[:2] *= ss
    base = render_face(model, identity, expression, rotation, translation, K2, (h * ss, w * ss),
                       texture, supersample=1).astype(np.float32)
    tab = _tables(model)
    cam = camera_vertices(model, identity, expression, rotation, translation).astype(np.float64)
    px = np.stack([K2[0, 0] * cam[:, 0] / cam[:, 2] + K2[0, 2],
                   K2[1, 1] * cam[:, 1] / cam[:, 2] + K2[1, 2], cam[:, 2]], 1)
    ras = rasterize(px, tab.tris, h * ss, w * ss, perspective=True)
    hit = ras.tri_id >= 0
    tid = ras.tri_id[hit]
    face = tab.tri_mat[tid] == tab.face_mat
    sel = np.flatnonzero(hit)[face]
    tid, bary = tid[face], ras.bary[hit][face]
    tv, tuv = tab.tris[tid], tab.tri_uv[tid]
    uv = (model.uvs[tuv] * bary[:, :, None]).sum(1)
    T = disp.shape[0]
    col, row = uv[:, 0] * T - 0.5, (1 - uv[:, 1]) * T - 0.5
    gy, gx = np.gradient(disp.astype(np.float32))
    g = np.stack([_sample(gx, col, row), _sample(gy, col, row)], 1)
    J = texel_jacobians(cam * 1e-3, model.uvs, tab.tris, tab.tri_uv, T)[tid]     # (n, 3, 2)
    G = np.einsum("nij,njk->nik", J.transpose(0, 2, 1), J)
    det = G[:, 0, 0] * G[:, 1, 1] - G[:, 0, 1] ** 2
    Gi = np.stack([np.stack([G[:, 1, 1], -G[:, 0, 1]], -1), np.stack([-G[:, 1, 0], G[:, 0, 0]], -1)], 1)
    Gi /= np.maximum(det, 1e-30)[:, None, None]
    grad_s = np.einsum("nij,nj->ni", J, np.einsum("nij,nj->ni", Gi, g))
    from hiface_blender.core.geometry import vertex_normals
    vn = vertex_normals(cam, model.tris)
    n = (vn[tv] * bary[:, :, None]).sum(1)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    n = n - grad_s
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    towards, ambient, diffuse = light
    ldir = towards / np.linalg.norm(towards)
    shade = ambient + diffuse * np.clip(n @ ldir, 0, None)
    texc = _sample(texture, col, row)
    lin = srgb_to_linear(texc) * shade[:, None] * 0.8
    srgb = np.where(lin <= 0.0031308, lin * 12.92, 1.055 * np.power(np.maximum(lin, 0), 1 / 2.4) - 0.055)
    img = base.reshape(-1, 3)
    img[sel] = np.clip(srgb * 255, 0, 255)
    img = img.reshape(h * ss, w * ss, 3).reshape(h, ss, w, ss, 3).mean((1, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), cam / 1.0


@pytest.fixture(scope="module")
def scene(face_model_data):
    return make_scene(face_model_data)


def make_scene(model):
    _UV[SIZE] = uv_raster(model, SIZE)
    rng = np.random.default_rng(5)
    identity = (0.6 * rng.standard_normal(model.id_basis.shape[0])).astype(np.float32)
    expression = np.zeros(len(model.exp_names), np.float32)
    R = rotation_ypr(12.0, -4.0, 2.0).astype(np.float32)
    h = w = 1024
    f = 1.3 * w
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], np.float32)
    t = np.array([0.0, 10.0, f * 165.0 / (0.62 * w)], np.float32)
    skin = truth_albedo(model, astronaut_skin_texture(size=SIZE))
    albedo, spots = draw_spots(skin)
    # The spots have no relief: the truth is flat under and around them.
    near = cv2.dilate(spots.astype(np.uint8), np.ones((15, 15))).astype(np.float32)
    disp = truth_displacement() * (1.0 - cv2.GaussianBlur(near, (0, 0), 2.0))
    img, _ = render_detailed(model, identity, expression, R, t, K, (h, w), albedo, disp)
    img_plain, _ = render_detailed(model, identity, expression, R, t, K, (h, w), skin, disp)
    cam = camera_vertices(model, identity, expression, R, t)
    _, mask = extract_texture(img, cam, K, model, size=SIZE)
    return dict(model=model, img=img, img_plain=img_plain, cam=cam, K=K, disp=disp,
                spots=spots, mask=mask, identity=identity, expression=expression, rotation=R,
                translation=t, albedo=albedo)


def _hp(x, w, sigma):
    return x - weighted_blur(x, w, sigma)


def _exact_residual(d: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The linearised shading change -c . grad d of a relief d (texel units), central
    differences on a periodic tile (the solver's own model)."""
    gx = 0.5 * (np.roll(d, -1, 1) - np.roll(d, 1, 1))
    gy = 0.5 * (np.roll(d, -1, 0) - np.roll(d, 1, 0))
    return -(c[..., 0] * gx + c[..., 1] * gy)


def test_solver_sees_relief_along_the_light_only():
    """One light's shading carries the relief's slope along the light's direction in the tile and
    nothing across it: the solver recovers stripes that vary along the light, returns nothing for
    stripes that vary across it, and on isotropic relief keeps the shape (correlation) but only
    part of the amplitude: the regulariser shrinks what it solves. `relief_gain` then scales the
    solution to the amplitude the residual asks for: all of it for stripes along the light, and
    on isotropic relief what the light shows (not the slope across it, which no gain brings
    back)."""
    size = 256
    theta = np.radians(30.0)
    c = np.zeros((size, size, 2), np.float32)
    c[..., 0], c[..., 1] = 0.9 * np.cos(theta), 0.9 * np.sin(theta)
    w = np.ones((size, size), np.float32)
    s = DetailSettings()
    screen = 1.0 / 8.4 ** 2
    yy, xx = np.indices((size, size), dtype=np.float64)

    def recover(d, gain=False):
        r = _exact_residual(d, c)
        rec = solve_directional(r, c, w, s.smoothness, screen)
        if gain:
            rec = rec * relief_gain(rec, r, c, w)
        return rec.std() / d.std(), np.corrcoef(rec.ravel(), d.ravel())[0, 1]

    def stripes(angle):    # about 16 whole periods over the tile: periodic, wavelength 16 texels
        nx, ny = np.round(16 * np.cos(angle)), np.round(16 * np.sin(angle))
        return np.sin(2 * np.pi * (nx * xx + ny * yy) / size)

    amp_along, r_along = recover(stripes(theta))
    amp_across, _ = recover(stripes(theta + np.pi / 2))
    amp_iso, r_iso = recover(_band(np.random.default_rng(3), size, 12.0))
    print(f"\nalong the light: amplitude {amp_along:.2f} r {r_along:.3f}; across: amplitude "
          f"{amp_across:.3f}; isotropic: amplitude {amp_iso:.2f} r {r_iso:.3f}")
    assert r_along > 0.99 and amp_along > 0.75
    assert amp_across < 0.05
    assert r_iso > 0.8 and amp_iso < 0.9 * amp_along
    gained_along, _ = recover(stripes(theta), gain=True)
    gained_iso, _ = recover(_band(np.random.default_rng(3), size, 12.0), gain=True)
    print(f"with the gain: along {gained_along:.3f}, isotropic {gained_iso:.3f}")
    assert abs(gained_along - 1.0) < 0.03
    assert amp_iso * 1.1 < gained_iso < 1.0


def _recovery(scene, img, s):
    """Static detail of `img` against the truth in the well-seen face region, both high-passed
    at the engine's own split: (correlation, amplitude ratio, static map, its outputs)."""
    static, seen, coeffs, geo, info = static_detail(img, scene["cam"], scene["K"], scene["model"],
                                                    scene["mask"], s)
    sigma = s.highpass_mm * 1e-3 / geo.metres_per_texel
    region = (seen > 0.95) & geo.used
    region = cv2.erode(region.astype(np.uint8), np.ones((9, 9))) > 0
    truth = _hp(scene["disp"], region.astype(np.float32), sigma)
    rec = _hp(static, region.astype(np.float32), sigma)
    r = np.corrcoef(truth[region], rec[region])[0, 1]
    amp = rec[region].std() / truth[region].std()
    return r, amp, static, dict(seen=seen, coeffs=coeffs, geo=geo, region=region, truth=truth,
                                sigma=sigma)


def test_texel_geometry_on_part_of_the_tile(face_model_data):
    """The seen-texel restriction changes which texels are worked on, not their values: each
    kept texel has the point, normal and Jacobian it has on the whole tile, and the texel size
    stays the whole tile's."""
    model = face_model_data
    zeros = np.zeros(model.id_basis.shape[0], np.float32)
    cam = camera_vertices(model, zeros, np.zeros(len(model.exp_names), np.float32),
                          rotation_ypr(15.0, -5.0, 0.0), np.array([0.0, 0.0, 500.0], np.float32))
    full = texel_geometry(model, cam, 256)
    keep = np.zeros((256, 256), bool)
    keep[40:150, 60:200] = True
    part = texel_geometry(model, cam, 256, keep)
    rows = np.searchsorted(full.index, part.index)
    assert np.array_equal(full.index[rows], part.index)
    assert np.array_equal(part.index, np.flatnonzero(full.used & keep))
    assert 0 < len(part.index) < len(full.index)
    for name in ("tri", "bary", "points", "normals", "pinv_jac"):
        assert np.array_equal(getattr(full, name)[rows], getattr(part, name)), name
    assert part.metres_per_texel == full.metres_per_texel
    assert np.array_equal(part.used, full.used)


def test_synthetic_truth(scene, tmp_path):
    s = DetailSettings(size=SIZE)
    r, amp, static, out = _recovery(scene, scene["img"], s)
    region, truth, geo, seen = out["region"], out["truth"], out["geo"], out["seen"]
    coeffs = out["coeffs"]
    # Spots: the same render without them (the truth is flat under and around them); what the
    # spots change in the recovered map is relief made of albedo.
    plain = static_detail(scene["img_plain"], scene["cam"], scene["K"], scene["model"],
                          scene["mask"], s)[0]
    spots = scene["spots"] & region
    leak = static - plain
    leak_rms = np.sqrt(np.mean(leak[spots] ** 2))
    leak_p95 = np.percentile(np.abs(leak[spots]), 95)
    # Against the true wrinkles and against the wrinkles the map itself recovered (a shrunken map
    # would hide its leak in the first).
    rec_std = amp * truth[region].std()
    leaks = (leak_rms / truth[region].std(), leak_p95 / np.percentile(np.abs(truth[region]), 95),
             leak_rms / rec_std)
    # The difference also holds the error the map has at those places anyway (the truth is flat
    # there): compare the relief at the spots with and without them, and far from any spot.
    hp = [_hp(m, region.astype(np.float32), out["sigma"]) for m in (static, plain)]
    at_spots = [np.sqrt(np.mean(m[spots] ** 2)) / truth[region].std() for m in hp]
    far = region & (cv2.dilate(scene["spots"].astype(np.uint8), np.ones((61, 61))) == 0)
    far_change = np.sqrt(np.mean(leak[far] ** 2)) / truth[region].std()
    print(f"\nsynthetic truth: r={r:.3f} amplitude ratio={amp:.3f} spot leak rms={leaks[0]:.3f} "
          f"p95={leaks[1]:.3f} (of the recovered relief: {leaks[2]:.3f}); relief at the spots "
          f"with / without them {at_spots[0]:.3f} / {at_spots[1]:.3f}, change far from them "
          f"{far_change:.3f}; region={region.mean():.2f} lighting={np.round(coeffs, 3)}")
    # Regression guards at the level reached so far (r 0.797, amplitude 0.55, leak 0.13 of the
    # true and 0.23 of the recovered relief). The acceptance targets of the detail issue
    # (r >= 0.8, amplitude within 25 %) are not met on this scene yet: its light's ambient share
    # is fitted at 0.10 (truth 0.32); given the true share, r 0.809 and amplitude 0.82.
    assert r >= 0.77
    assert 0.45 <= amp <= 1.25
    assert leaks[0] < 0.2 and leaks[1] < 0.2 and leaks[2] < 0.35
    # The spots add no relief of their own beyond the map's error there, and do not change the
    # map elsewhere (the person's pigment relation is fitted on plain skin, not on them).
    assert at_spots[0] < 1.1 * at_spots[1]
    assert far_change < 0.1
    # Unseen texels carry relief too (mirror or the person's own statistics), not a flat hole.
    used = geo.used
    unseen = used & (seen < 0.05)
    assert unseen.mean() > 0.1
    assert static[unseen].std() > 0.2 * static[region].std()
    assert np.isfinite(static).all()


def test_spot_colour_makes_little_relief(scene, monkeypatch):
    """What the spots' colour itself turns into relief. The engine reads no data where it sees
    pigment, and the map there is carried over from the skin around; the comparison of
    test_synthetic_truth (against the same render without spots, read everywhere) counts that
    withheld data too: the relief the plain skin's own texture makes at those texels. Here the
    render without spots is read with the data weights the spotted one got, so what remains is
    relief made of the spots' colour (their rims, where the weight is not zero, and the light and
    pigment fits they take part in)."""
    import hiface_blender.core.detail as detail_module

    s = DetailSettings(size=SIZE)
    solve, gain = detail_module.solve_directional, detail_module.relief_gain
    weights = []

    def recording_solve(r, c, w, *args, **kwargs):
        weights.append(w.copy())
        return solve(r, c, w, *args, **kwargs)

    monkeypatch.setattr(detail_module, "solve_directional", recording_solve)
    static, out = _recovery(scene, scene["img"], s)[2:]
    (w_spots,) = weights
    monkeypatch.setattr(detail_module, "solve_directional",
                        lambda r, c, w, *a, **k: solve(r, c, np.minimum(w, w_spots), *a, **k))
    monkeypatch.setattr(detail_module, "relief_gain",
                        lambda d, r, c, w: gain(d, r, c, np.minimum(w, w_spots)))
    plain = static_detail(scene["img_plain"], scene["cam"], scene["K"], scene["model"],
                          scene["mask"], s)[0]
    region, truth = out["region"], out["truth"]
    spots = scene["spots"] & region
    made = static - plain
    rms = np.sqrt(np.mean(made[spots] ** 2)) / truth[region].std()
    p95 = np.percentile(np.abs(made[spots]), 95) / np.percentile(np.abs(truth[region]), 95)
    labels = cv2.connectedComponents(scene["spots"].astype(np.uint8))[1]
    per_spot = [made[(labels == i) & region].mean() for i in range(1, labels.max() + 1)
                if ((labels == i) & region).sum() >= 5]
    per_spot_rms = np.sqrt(np.mean(np.square(per_spot))) / truth[region].std()
    print(f"\nrelief made of the spots' colour, same data weights: rms {rms:.3f}, p95 {p95:.3f}, "
          f"per-spot mean {per_spot_rms:.3f} of the wrinkles'")
    # Measured 0.060 rms, 0.062 p95, 0.043 per-spot mean (the detail issue: under 10 %).
    assert len(per_spot) >= 10
    assert rms < 0.1 and p95 < 0.1 and per_spot_rms < 0.1


@pytest.mark.parametrize("light", sorted(OTHER_LIGHTS))
def test_synthetic_truth_under_other_lights(scene, light):
    """The same face and relief under a side and an overhead light: how much of the relief the
    photo shows depends on the light, the frontal main scene being the hardest."""
    img, _ = render_detailed(scene["model"], scene["identity"], scene["expression"],
                             scene["rotation"], scene["translation"], scene["K"], (1024, 1024),
                             scene["albedo"], scene["disp"], light=OTHER_LIGHTS[light])
    r, amp, static, _ = _recovery(scene, img, DetailSettings(size=SIZE))
    print(f"\n{light} light: r={r:.3f} amplitude ratio={amp:.3f}")
    # Regression guards at the level reached (side r 0.70, amplitude 0.99; top r 0.83, amplitude
    # 0.86). The light's direction is found to within a few degrees; its ambient share, which
    # sets the amplitude, trades off against the albedo's own large-scale profile.
    assert r >= {"side": 0.67, "top": 0.79}[light]
    assert 0.7 <= amp <= 1.25
    assert np.isfinite(static).all()


def test_dynamic_maps_and_export(scene, tmp_path):
    model = scene["model"]
    neutral = model.neutral + np.tensordot(scene["identity"], model.id_basis, 1)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        maps = compute_detail(scene["img"], scene["cam"], scene["K"], model, neutral,
                              scene["expression"], scene["mask"], DetailSettings(size=SIZE))
        times.append(time.perf_counter() - t)
    print(f"\ncompute_detail 1024: median {np.median(times):.2f} s of {np.round(times, 2)}")
    assert np.median(times) < 6.0     # sanity bound only; the figure is reported
    for a in (maps.static, maps.compressed, maps.stretched):
        assert a.shape == (SIZE, SIZE) and a.dtype == np.float32 and np.isfinite(a).all()
    # Compressed: folds on the forehead (browInnerUp / browOuterUp compress it vertically),
    # none on the nose bridge's top where no shape compresses much; depth in a skin range.
    used = uv_raster(model, SIZE)[0] >= 0
    fore = maps.compressed[120:200, 380:640]
    assert 2e-5 < np.abs(fore).max() < 1e-3
    # Folds run across the compression: forehead folds are horizontal lines, so the map varies
    # much more down the rows than along them.
    gy, gx = np.gradient(fore)
    assert np.mean(gy ** 2) > 2.0 * np.mean(gx ** 2)
    # Stretched: removes fine relief, so static + stretched has less fine energy than static.
    fine = lambda a: a - cv2.GaussianBlur(a, (0, 0), 2.0)
    assert (fine(maps.static + maps.stretched)[used].std()
            < 0.8 * fine(maps.static)[used].std())
    # Export round trip: 16-bit PNG with its scale in metres.
    meta = save_displacement(tmp_path / "static.png", maps.static)
    back, meta2 = load_displacement(tmp_path / "static.png")
    assert meta == meta2 and meta["units"] == "m"
    assert np.abs(back - maps.static).max() <= 1.01 * meta["scale_m"] / 65535


@pytest.mark.parametrize("clip", ["bbaf2n", "brbk7n"])
def test_relief_on_real_frames_stays_in_a_skin_range(reconstructor, grid_frames, clip):
    """GRID frames (360x288): bbaf2n is lit softly and evenly, where no single light direction is
    well determined (the one-light fit's diffuse share is small and its direction comes out from
    below); a light that changes the shading that little would scale the relief up to millimetres,
    so the nine-term fit is used there. brbk7n has a clear key light, and the one-light fit is
    used. Either way the relief stays in a skin range (tens of micrometres rms)."""
    model = reconstructor.model
    for rgb in grid_frames[clip]:
        res = reconstructor.run(rgb)
        static, seen, _, _, info = static_detail(rgb, posed_vertices(res, model), res.intrinsics,
                                                 model, res.texture_mask, DetailSettings(size=512))
        light = info["light"]
        contrast = light["diffuse"] / (light["ambient"] + light["diffuse"])
        rms_um = float(static[seen > 0.9].std() * 1e6)
        print(f"\n{clip}: light model {info['light_model']}, one-light diffuse share {contrast:.2f}, "
              f"relief rms {rms_um:.0f} um")
        assert info["light_model"] == {"bbaf2n": "sh9", "brbk7n": "directional"}[clip]
        assert 10.0 < rms_um < 150.0

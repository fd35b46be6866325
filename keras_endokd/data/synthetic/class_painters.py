"""One painter per Kvasir-v2 class: the cue an endoscopist would name, drawn on a `Scene`.

Each painter takes a `scene.Scene` of m images of its class and returns their radiance, float32
[m, 3, S, S] in about [0, 1], before the endoscope (`optics`) lights, blurs and overlays it:

- dyed-lifted-polyps: a rounded, raised, light-blue bleb of dye-stained submucosal fluid, shaded
  and glinting, sometimes with the pink polyp still on top.
- dyed-resection-margins: a flat blue resection site with a ragged edge, a darker rim of pooled
  dye and red dots of cauterised vessels.
- esophagitis: the z-line (below) with red linear erosions, many fibrin-coated, running from the
  boundary into the pale squamous mucosa, in a patchy inflamed band that fades outwards.
- normal-cecum: semicircular folds (arcs with their shadows) and the appendiceal orifice, a small
  dark crescent or slit; visible vessels.
- normal-pylorus: a dark round opening with gastric folds converging on it.
- normal-z-line: an irregular ring where pale, whitish-pink squamous mucosa meets red gastric
  mucosa around the dark oesophageal lumen, sometimes with broad "tongues" and slight redness.
- polyps: a raised rounded lesion, lobulated, with shading, a contact shadow and a specular glint.
- ulcerative-colitis: mottled, granular, inflamed mucosa without vessels, with bleeding spots and
  whitish ulcers (fibrin).

Esophagitis and the normal z-line share one painter (`_zline`), which adds the erosions and the
inflamed band for esophagitis only; their mild cases overlap, as do a flat, small lifted bleb and a
small smooth-edged resection site (see `difficulty`). A painter draws its uniforms from `sc.st`
in a fixed order: reordering or adding a draw changes every image of its class.
"""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from keras_endokd.data.synthetic import drawing as draw
from keras_endokd.data.synthetic.scene import (
    CECUM, COLON, GASTRIC, GASTRIC_RED, INFLAMED, SQUAMOUS, Scene, dye_tint, flat, lerp, mucosa,
    outline, patches, severity, stain,
)

F32 = np.float32

# Kvasir's picture-in-picture box comes from the colonoscope's position guide: lower GI only.
LOWER_GI = (0, 1, 3, 6, 7)


def _dyed_lifted_polyp(sc: Scene) -> np.ndarray:
    st, d = sc.st, sc.d
    sev = severity(sc, d.dyed_subtle_fraction)  # low: a flat, small bleb, like a resection site
    img, _ = mucosa(sc, COLON, st.uniform(0.2, 0.8))
    tint = dye_tint(sc)
    r = lerp((0.12, 0.4), np.clip(sev + st.jitter(0.15), 0, 1))
    aspect, height = st.uniform(0.65, 1.0), lerp(d.bleb_height_range, sev)
    frame = draw.Frame.ellipse(st.jitter(0.09), st.jitter(0.09), st.angle(), r, r * aspect)
    un, vn, dist = outline(sc, frame, st.coeffs(3, 0.05), 2)
    spread = patches(sc, st.uniform(0.2, 0.7))
    stain(img, spread + 0.6 * np.exp(np.clip(1.0 - dist, -10, 0) * 2.5), tint)
    bleb = flat([0.84, 0.86, 0.92], 1.0 + 0.04 * sc.field("fine", 1))
    stain(bleb, draw.col(st.uniform(0.6, 1.3)) * (1.0 + 0.2 * sc.field("medium", 2)), tint)
    on_top = np.flatnonzero(st.flag(np.where(sev < 0.2, 0.2, 0.6)))  # the polyp, pink on blue
    px, py, pa = st.jitter(0.15), st.jitter(0.15), st.angle()
    if len(on_top):
        pu, pv = draw.local_coords(
            un[on_top], vn[on_top], px[on_top], py[on_top], pa[on_top], 0.4, 0.32
        )
        polyp = draw.edge((1 - np.sqrt(pu * pu + pv * pv)) * 0.1, sc.pixel)
        polyp *= 0.5 + 0.1 * sc.field("fine", 0)[on_top]
        bleb[on_top] = draw.blend(bleb[on_top], draw.rgb([0.80, 0.50, 0.55]), polyp)
    diffuse, spec = draw.dome_shading(un, vn, height, sc.light)
    bleb *= diffuse[:, None]
    bleb += (spec * draw.col(st.uniform(0.3, 0.8) * np.clip(height, 0, 1)))[:, None]
    inside = draw.edge((1.0 - dist) * draw.col(r * aspect), sc.pixel)
    return draw.blend(img, bleb, inside * draw.ramp((1.0 - dist) * 4.0 + 0.3))


def _dyed_resection_margin(sc: Scene) -> np.ndarray:
    st, d = sc.st, sc.d
    sev = severity(sc, d.dyed_subtle_fraction)  # low: small, smooth-edged, few cautery marks
    img, _ = mucosa(sc, COLON, st.uniform(0.2, 0.8))
    tint = dye_tint(sc)
    r = lerp((0.1, 0.32), np.clip(sev + st.jitter(0.15), 0, 1))
    aspect = st.uniform(0.6, 1.0)
    frame = draw.Frame.ellipse(st.jitter(0.09), st.jitter(0.09), st.angle(), r, r * aspect)
    un, vn, dist = outline(sc, frame, st.coeffs(2, 0.08), 2)
    ragged = draw.col(lerp(d.margin_raggedness_range, sev))
    dist *= 1.0 - ragged * (0.6 * sc.field("medium", 3) + 0.5 * sc.field("fine", 1))  # cut edge
    spread = patches(sc, st.uniform(0.3, 0.8))
    stain(img, spread + 0.8 * np.exp(np.clip(1.0 - dist, -10, 0) * 2.0), tint)
    base = flat([0.80, 0.83, 0.88], 1.0 + 0.08 * sc.field("fine", 1))
    stain(base, draw.col(st.uniform(0.5, 1.1)) * (1.0 + 0.25 * sc.field("medium", 2)), tint)
    dots = draw.ramp((sc.field("fine", 0) - draw.col(lerp((2.6, 1.4), sev))) * 2.5)
    draw.blend(base, draw.rgb([0.50, 0.08, 0.08]), dots * 0.9)  # cauterised vessels, blood
    diffuse, _ = draw.dome_shading(-un, -vn, st.uniform(0.1, 0.4), sc.light)  # a shallow crater
    base *= diffuse[:, None]
    rim = draw.line((dist - 1.0) * draw.col(r * aspect), 0.006, sc.pixel)
    rim = rim * draw.col(lerp((0.3, 0.8), sev))
    # Pooled dye and burn marks.
    draw.blend(base, draw.rgb(np.array([0.5, 0.3, 0.45], F32) * tint), rim)
    return draw.blend(img, base, draw.edge((1.0 - dist) * draw.col(r * aspect), sc.pixel))


def _zline(sc: Scene, esophagitis: bool) -> np.ndarray:
    """Shared by normal-z-line and esophagitis: the two differ only in the erosions and redness."""
    st, d = sc.st, sc.d
    sev = severity(sc, d.subtle_fraction) if esophagitis else np.zeros(sc.m, F32)
    img, squamous = mucosa(sc, SQUAMOUS, st.uniform(0.1, 0.5))
    gastric = sc.colour(GASTRIC_RED)
    frame = draw.Frame.ellipse(st.uniform(-0.15, 0.15), st.uniform(-0.15, 0.15), st.angle(), 1.0,
                            st.uniform(0.7, 1.0))  # the oesophagus seen obliquely
    u, v = frame.uv(sc.x, sc.y)
    dist = np.sqrt(u * u + v * v)
    r0 = st.uniform(0.15, 0.28)
    coeffs = st.coeffs(5, lerp(d.zline_irregularity_range, st.uniform()) * 0.6)
    boundary = draw.col(r0) * (1.0 + draw.harmonics(draw.unit_phase(u, v, dist), coeffs, 2))
    gastric_mask = draw.ramp((boundary - dist) / draw.col(st.uniform(0.006, 0.02)) + 0.5)
    n_tongues = np.floor(st.uniform(0, 2.99 if not esophagitis else 1.99))
    for k in range(2):  # broad, smooth, tapering "tongues" of gastric mucosa: a normal variant
        a, w, length = st.angle(), st.uniform(0.025, 0.06), st.uniform(0.03, 0.1)
        on = k < n_tongues
        if not on.any():
            continue
        t = frame.along(sc.x, sc.y, np.cos(a) / length, np.sin(a) / length) - draw.col(r0 / length)
        across = frame.along(sc.x, sc.y, -np.sin(a) / w, np.cos(a) / w)
        tongue = np.exp(-np.square(across / (1.0 - 0.8 * np.clip(t, 0, 1))))  # tapers to a tip
        tongue *= np.clip((1.0 - t) * 3.0, 0.0, draw.col(on))
        tongue *= np.clip(t * length[:, None, None] + r0[:, None, None], 0, 0.01) * 100.0
        np.maximum(gastric_mask, tongue, out=gastric_mask)
    redness = st.uniform(0.0, d.zline_redness_max) + 0.3 * sev
    halo = draw.col(redness) * np.exp(np.clip(boundary - dist, -10, 0) * 20.0)
    draw.blend(img, img * draw.rgb(gastric / squamous), np.maximum(gastric_mask, halo))
    if esophagitis:
        _erosions(sc, img, frame, u, v, r0, coeffs, sev)
        _erythema(sc, img, boundary, dist, r0, squamous, sev)
    lumen = st.uniform(0.3, 0.6) * r0
    depth = 1.0 - 0.9 * draw.ramp((draw.col(lumen * 1.3) - dist) / draw.col(lumen * 0.8))
    depth *= 0.6 + 0.4 * draw.ramp(dist / draw.col(r0 * 1.6))
    img *= depth[:, None]
    return img


def _erythema(sc: Scene, img, boundary, dist, r0, squamous, sev) -> None:
    """Patchy redness of the squamous mucosa above the z-line, fading outwards: the inflamed,
    oedematous band around reflux erosions. A normal z-line's reddening (`zline_redness_max`) is
    narrower and fainter, so only the severer cases stand apart; the mild ones overlap it."""
    reach = draw.col(r0 * sc.st.uniform(0.4, 0.9))
    band = np.exp(np.clip(boundary - dist, -10, 0) / reach)
    band *= draw.ramp(0.5 + 0.7 * sc.field("medium", 2)) * draw.col(lerp(sc.d.erythema_range, sev))
    draw.blend(img, img * draw.rgb(sc.colour(INFLAMED) / squamous), band)


def _erosions(sc: Scene, img, frame: draw.Frame, u, v, r0, coeffs, sev) -> None:
    """Linear red erosions from the z-line outwards; severity sets count, length, width, contrast.

    Mild (LA grade A-like) erosions are one or two short, thin, faint streaks, which a normal z-line
    with tongues and redness can mimic at low resolution. The circle is cut into 8 sectors with at
    most one streak each: every pixel draws only its own sector's streak, so the cost does not
    grow with the number of erosions.
    """
    st, d, m, k = sc.st, sc.d, sc.m, 8
    sector_width = 2 * np.pi / k
    a = (np.arange(k) + 0.5) * sector_width - np.pi + st.uniforms(k, -0.2, 0.2)
    phase = np.exp(1j * a[:, :, None] * np.arange(2, 2 + coeffs.shape[1]))
    start = r0[:, None] * (1.0 + (coeffs[:, None, :] * phase).real.sum(2))  # on the z-line
    start = start + st.uniforms(k, -0.015, 0.02)
    length = st.uniforms(k, 0.5, 1.2) * lerp((0.04, 0.16), sev)[:, None]
    width = st.uniforms(k, 0.6, 1.3) * lerp(d.erosion_width_range, sev)[:, None]
    bend = st.uniforms(k, -2.0, 2.0)
    rank = np.argsort(np.argsort(st.uniforms(k), axis=1), axis=1)  # which sectors have one
    alpha = st.uniforms(k, 0.7, 1.0) * lerp(d.erosion_contrast_range, sev)[:, None]
    alpha = alpha * (rank < (1 + np.floor(sev * 7.99))[:, None])
    coated = st.uniforms(k) < lerp(d.fibrin_range, sev)[:, None]  # a fibrin-covered centre
    wide = np.maximum(width, 0.7 * sc.pixel)  # as draw.line: thinner than a pixel -> fainter
    inv_len, inv_w = 1.0 / length, 1.0 / wide
    params = {  # per (image, sector), looked up by every pixel of that sector
        "cos_l": np.cos(a) * inv_len, "sin_l": np.sin(a) * inv_len, "start_l": start * inv_len,
        "cos_w": np.cos(a) * inv_w, "sin_w": np.sin(a) * inv_w, "bend_w": bend * length**2 * inv_w,
        "red": alpha * width * inv_w,
        "fibrin": alpha * coated * np.minimum(d.fibrin_width * width * inv_w, 1.0),
    }
    params = np.stack([v.astype(F32) for v in params.values()], 1).reshape(m, -1)  # [m, 8 * k]
    for i in range(0, m, 4):  # a few images at a time: the lookups stay in cache
        four = slice(i, i + 4)
        _erosion_sector(img[four], u[four], v[four], params[four], k, d.fibrin_width)


def _erosion_sector(img, u, v, params, k: int, fibrin_width: float) -> None:
    """Draw each pixel's sector streak; `params` [m, 8 * k] as built by `_erosions`."""
    m = len(img)
    sector = np.floor((np.arctan2(v, u) + np.pi) * (k / (2 * np.pi))).astype(np.intp)
    np.clip(sector, 0, k - 1, out=sector)
    sector += (np.arange(m) * 8 * k)[:, None, None]
    flat = params.ravel()
    cos_l, sin_l, start_l, cos_w, sin_w, bend_w, red_a, fibrin_a = (
        np.take(flat, sector + j * k) for j in range(8)
    )
    t = u * cos_l + v * sin_l - start_l  # 0 at the z-line, 1 at the tip
    across = v * cos_w - u * sin_w + bend_w * np.square(t)  # in streak widths
    profile = np.clip(t * 6.0, 0.0, 1.0) * np.clip((1.0 - t) * 3.0, 0.0, 1.0)
    np.square(across, out=across)
    draw.blend(img, draw.rgb([0.78, 0.16, 0.14]), np.exp(-across) * profile * red_a)
    fibrin = np.exp(across * F32(-1 / fibrin_width**2)) * profile * fibrin_a
    draw.blend(img, draw.rgb([0.93, 0.87, 0.74]), fibrin)


def _normal_cecum(sc: Scene) -> np.ndarray:
    st = sc.st
    img, _ = mucosa(sc, CECUM, st.uniform(0.7, 1.4))
    fx, fy = st.uniform(-0.2, 0.2), st.uniform(-0.2, 0.2)
    frame = draw.Frame.ellipse(fx, fy, st.angle(), 1.0, st.uniform(0.6, 1.0))
    u, v = frame.uv(sc.x, sc.y)
    inv_dist = 1.0 / (np.sqrt(u * u + v * v) + 1e-6)
    wobbly = u * u + v * v
    np.sqrt(wobbly, out=wobbly)
    wobbly += 0.02 * sc.field("coarse", 3)
    r, spacing = st.uniform(0.08, 0.16), st.uniform(0.09, 0.15)
    shade = np.ones_like(wobbly)
    for k in range(4):  # semicircular folds: a lit ridge with its shadow on the far side
        a, span, w = st.angle(), st.uniform(0.7, 2.4), st.uniform(0.012, 0.025)
        facing = frame.along(sc.x, sc.y, np.cos(a), np.sin(a)) * inv_dist  # cos(phi - a)
        window = np.clip((facing - draw.col(np.cos(span))) * 3.0, 0.0, 1.0)
        shift = draw.col(st.uniform(-0.6, 0.6) * spacing)  # folds are not concentric
        t = (wobbly - draw.col(r + k * spacing) - shift * facing) * draw.col(1.0 / w)
        shade += window * (0.18 * np.exp(-t * t) - 0.35 * np.exp(-np.square(t - 1.6)))
    img *= shade[:, None]
    ox, oy = fx + st.jitter(0.04), fy + st.jitter(0.04)
    rho, span, thick = st.uniform(0.02, 0.06), st.uniform(0.5, 1.4), st.uniform(0.005, 0.014)
    orifice = draw.Frame.ellipse(ox, oy, st.angle(), 1.0, 1.0)
    ou, ov = orifice.uv(sc.x, sc.y)
    odist = np.sqrt(ou * ou + ov * ov) + 1e-6
    window = np.clip((ou / odist - draw.col(np.cos(span))) * 5.0, 0.0, 1.0)  # a crescent or slit
    lip = draw.line(odist - draw.col(rho + thick), thick, sc.pixel)
    draw.blend(img, draw.rgb([0.95, 0.80, 0.74]), 0.35 * window * lip)
    slit = draw.line(odist - draw.col(rho), thick, sc.pixel)
    draw.blend(img, draw.rgb([0.30, 0.10, 0.09]), 0.9 * window * slit)
    return img


def _normal_pylorus(sc: Scene) -> np.ndarray:
    st = sc.st
    img, _ = mucosa(sc, GASTRIC, st.uniform(0.0, 0.3))
    r = st.uniform(0.03, 0.1)
    frame = draw.Frame.ellipse(st.uniform(-0.12, 0.12), st.uniform(-0.12, 0.12), st.angle(), r,
                            r * st.uniform(0.6, 1.0))
    u, v = frame.uv(sc.x, sc.y)
    dist = np.sqrt(u * u + v * v)
    # Folds converging on the opening.
    folds = draw.harmonics(draw.unit_phase(u, v, dist), st.coeffs(6, 0.25), 3)
    shade = 1.0 + folds * np.clip(dist - 1.0, 0.0, 1.0) * np.exp(np.clip(1.0 - dist, -30, 0) * 0.2)
    shade += 0.15 * np.exp(-np.square((dist - 1.7) * (1 / 0.6)))  # the raised pyloric ring
    shade *= 1.0 - 0.92 * draw.ramp((1.1 - dist) * 2.0)
    shade *= 0.6 + 0.4 * draw.ramp(dist * draw.col(r / 0.35))
    img *= shade[:, None]
    return img


def _polyp(sc: Scene) -> np.ndarray:
    st = sc.st
    img, base = mucosa(sc, COLON, st.uniform(0.4, 1.0))
    r, aspect, height = st.uniform(0.07, 0.28), st.uniform(0.7, 1.0), st.uniform(0.6, 2.0)
    frame = draw.Frame.ellipse(st.jitter(0.13), st.jitter(0.13), st.angle(), r, r * aspect)
    un, vn, dist = outline(sc, frame, st.coeffs(4, 0.07), 2)  # lobulated outline
    diffuse, spec = draw.dome_shading(un, vn, height, sc.light, ambient=0.45)
    redder = np.stack([np.ones(sc.m, F32), st.uniform(0.72, 0.92), st.uniform(0.78, 0.98)], 1)
    tissue = base * redder
    polyp = flat(tissue, (1.0 + 0.08 * sc.field("fine", 0)) * diffuse)
    polyp += (spec * draw.col(st.uniform(0.25, 0.7)))[:, None]
    lx, ly = sc.light[:, 0], sc.light[:, 1]
    away = np.clip(-(un * draw.col(lx) + vn * draw.col(ly)) / (dist + 1e-6) * 3.0, 0.0, 1.0)
    rim = (dist - 1.0) * draw.col(r / 0.015)
    shadow = away * np.exp(-np.square(np.clip(rim, 0.0, 10.0))) * np.clip(rim * 10.0, 0.0, 1.0)
    img *= (1.0 - 0.4 * shadow)[:, None]  # contact shadow on the side away from the light
    return draw.blend(img, polyp, draw.edge((1.0 - dist) * draw.col(r * aspect), sc.pixel))


def _ulcerative_colitis(sc: Scene) -> np.ndarray:
    st = sc.st
    sev = st.uniform()
    img, _ = mucosa(sc, INFLAMED, st.uniform(0.0, 0.25) * (1 - sev))  # vessels vanish
    mottle = draw.ramp(0.5 + 0.5 * sc.low("medium", 3)) * draw.col(lerp((0.2, 0.6), sev))
    mottle = draw.upsample(mottle, sc.size)  # patchy erythema
    draw.blend(img, draw.rgb([0.68, 0.17, 0.16]), mottle)
    img *= (1.0 + draw.col(lerp((0.04, 0.12), sev)) * sc.field("fine", 1))[:, None]  # granular
    spots = sc.field("fine", 0)
    bleeding = draw.ramp((spots - draw.col(lerp((2.4, 1.4), sev))) * 2.0)
    draw.blend(img, draw.rgb([0.45, 0.04, 0.05]), 0.9 * bleeding)
    ulcers = draw.ramp((-spots - draw.col(lerp((2.3, 1.1), sev))) * 2.5)  # fibrin-covered ulcers
    draw.blend(img, draw.rgb([0.93, 0.90, 0.78]), 0.9 * ulcers)
    return img


PAINTERS: Dict[int, Callable[[Scene], np.ndarray]] = {  # label (index into CLASS_NAMES): painter
    0: _dyed_lifted_polyp,
    1: _dyed_resection_margin,
    2: lambda sc: _zline(sc, esophagitis=True),
    3: _normal_cecum,
    4: _normal_pylorus,
    5: lambda sc: _zline(sc, esophagitis=False),
    6: _polyp,
    7: _ulcerative_colitis,
}

"""An embedded, procedural Kvasir-v2 look-alike, so the package runs with nothing to download.

Images are drawn from a seed at any size, one frame per (seed, split, index, label). Each of the
eight classes carries the cue an endoscopist would name, modelled on the real frames:

- dyed-lifted-polyps: a rounded, raised, light-blue bleb of dye-stained submucosal fluid, shaded and
  glinting, sometimes with the pink polyp still on top.
- dyed-resection-margins: a flat blue resection site with a ragged edge, a darker rim of pooled dye
  and red dots of cauterised vessels.
- esophagitis: the z-line (see below) with red linear erosions, many fibrin-coated, running from
  the boundary into the pale squamous mucosa, in a patchy inflamed band that fades outwards.
- normal-cecum: semicircular folds (arcs with their shadows) and the appendiceal orifice, a small
  dark crescent or slit; visible vessels.
- normal-pylorus: a dark round opening with gastric folds converging on it.
- normal-z-line: an irregular ring where pale, whitish-pink squamous mucosa meets red gastric
  mucosa around the dark oesophageal lumen, sometimes with broad "tongues" and slight redness.
- polyps: a raised rounded lesion, lobulated, with shading, a contact shadow and a specular glint.
- ulcerative-colitis: mottled, granular, inflamed mucosa without vessels, with bleeding spots and
  whitish ulcers (fibrin).

All share pinkish-red mucosa with texture and vessels, and vary in pose, scale, colour and lighting.
Artefacts of real frames are added per image: the black octagonal or round field stop, white
on-screen text, specular glints, defocus, sensor noise, and (lower-GI classes only, as in Kvasir)
the green picture-in-picture scope-position box.

Two pairs are confusable on purpose, as in the real data, through a latent severity per image:
mild esophagitis (few, thin, faint erosions, little redness) against a normal z-line (irregular,
slightly red), and a flat lifted bleb against a small smooth-edged resection site. Thin streaks
alone are not enough: trained from scratch on 160 frames per class, the student's design at
widths 1-3 stays at chance on streaks, even wide and fully opaque ones (`experiments.pair_probe`),
so the severer cases also carry what it can learn, the inflamed band and pale fibrin coats.

What opens the gap between a teacher and the student is the nuisance, not the pairs: real frames
vary wildly in white balance, exposure, focus, noise and how much vessel and mucosa texture shows,
and learning to ignore all that costs capacity. At half the default nuisance (sensor noise,
defocus, colour, brightness and saturation jitter, texture strength) and with 35% of the pair
images ambiguous, the student reached 89.4% and a 3x-wide teacher 91.75% on the 8 classes: no
room for distillation. At the defaults, trained from scratch on the same 160 frames per class:
student 84.0%, 3x-wide teacher 89.5% (8-class probe, 20 / 24 epochs, seed 0); in the default
run, student alone 84.0%, `mobile_x3` 90.1%, the student distilled from both teachers 86.8%.
Every knob that sets difficulty is in `Difficulty`.

Each image has its own random generator, seeded from (seed, split, index, label), so a split
regenerates identically whether drawn whole or in pieces. Rendering is numpy vectorised over
batches of same-class images (`synthetic_render` holds the drawing primitives and the camera);
about 1,000 images/s at 128 px on one core.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
from types import SimpleNamespace
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from keras_endokd.data import synthetic_render as R
from keras_endokd.data.kvasir import CLASS_NAMES  # the synthetic data imitates Kvasir-v2
from keras_endokd.data.source import SPLIT_NAMES, DatasetSource, Split
from keras_endokd.atomic_files import atomic_path

F32 = np.float32

# Kvasir's picture-in-picture box comes from the colonoscope's position guide: lower GI only.
LOWER_GI = (0, 1, 3, 6, 7)
_LOWER_GI_MASK = np.isin(np.arange(8), LOWER_GI)
DEFAULT_SPLIT_SIZES = {"train": 160, "val": 40, "test": 100}


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """Every knob of how hard the synthetic data is; lengths are fractions of the image width."""

    noise_std: float = 0.04  # sensor noise std (fraction of full scale), x U(0.5, 1.5) per image
    blur_prob: float = 0.5  # fraction of images out of focus
    blur_sigma_range: Tuple[float, float] = (0.002, 0.0064)  # defocus Gaussian sigma
    colour_jitter: float = 0.1  # std of warm-cool log gain (white balance, mucosa and dye hue)
    brightness_jitter: float = 0.25  # std of the log of overall brightness
    saturation_jitter: float = 0.25  # std of the log of the saturation factor
    texture_strength: float = 1.5  # scales mucosa texture and vessel contrast
    subtle_fraction: float = 0.25  # fraction of esophagitis images with faint erosions (mild)
    dyed_subtle_fraction: float = 0.25  # fraction of dyed images drawn ambiguous (flat, small)
    erosion_contrast_range: Tuple[float, float] = (0.15, 0.9)  # erosion opacity, mildest..severest
    erosion_width_range: Tuple[float, float] = (0.005, 0.02)  # erosion width, mildest..severest
    zline_irregularity_range: Tuple[float, float] = (0.03, 0.2)  # z-line outline wobble / radius
    zline_redness_max: float = 0.35  # max reddening of squamous mucosa next to a normal z-line
    erythema_range: Tuple[float, float] = (0.2, 1.0)  # inflamed band above esophagitis, mild..severe
    fibrin_range: Tuple[float, float] = (0.3, 1.0)  # chance an erosion is fibrin-coated, mild..severe
    fibrin_width: float = 0.6  # width of an erosion's fibrin coat, as a fraction of its own width
    margin_raggedness_range: Tuple[float, float] = (0.02, 0.16)  # resection edge jag / radius
    bleb_height_range: Tuple[float, float] = (0.1, 1.6)  # lifted-bleb dome height, flat..tall
    border_prob: float = 0.8  # black field stop (octagon or circle) around the image
    text_prob: float = 0.6  # white on-screen text in the top-left corner
    specular_prob: float = 0.7  # stray specular glints on the mucosa
    pip_prob: float = 0.4  # green picture-in-picture box, lower-GI classes only
    lumen_prob: float = 0.4  # dark distant lumen somewhere in lower-GI views

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_prob", "_fraction")) and not 0.0 <= value <= 1.0:
                raise ValueError(f"Difficulty.{f.name} must lie in [0, 1], got {value!r}.")
            if f.name.endswith("_range") and not (len(value) == 2 and 0.0 <= value[0] <= value[1]):
                raise ValueError(f"Difficulty.{f.name} must be (lo, hi), 0 <= lo <= hi: {value!r}.")
        if not self.fibrin_width > 0.0:
            raise ValueError(f"Difficulty.fibrin_width must be > 0, got {self.fibrin_width!r}.")


DEFAULT_DIFFICULTY = Difficulty()

# Per-image random numbers: uniforms for the shared camera (columns [0, _N_COMMON)) and for the
# class painter (the rest), plus white-noise fields smoothed into textures (count, low-res size).
_N_COMMON, _N_CLASS = 80, 128
_FIELDS = {"coarse": (4, 5), "medium": (4, 14), "fine": (2, 36)}
_CHUNK_PIXELS = 2**18  # images rendered together: keeps the float32 working set small
_TEXT_BITS = (4, 12, 5, 3)  # lines, characters per line, glyph rows, glyph columns
_SQRT3 = float(np.sqrt(3.0))

# Base colours (linear RGB, 0..1) of the mucosae, before per-image variation.
_COLON = (0.86, 0.52, 0.44)
_CECUM = (0.88, 0.58, 0.50)
_GASTRIC = (0.86, 0.45, 0.32)
_SQUAMOUS = (0.87, 0.71, 0.65)
_GASTRIC_RED = (0.76, 0.30, 0.24)
_INFLAMED = (0.80, 0.35, 0.30)
# Colour varies along a warm-cool axis and, less, a magenta-green one, in log RGB gains: tissue
# and white balance shift between orange and pink, never to green.
_WARM, _TINT = np.array([1.0, 0.0, -1.0], F32), np.array([0.3, -0.6, 0.3], F32)


class _Stream:
    """Hands out one column of per-image uniforms per draw, in call order.

    Each painter always draws the same things in the same order, so a parameter's column (hence its
    value for a given image) never depends on which other images share the batch.
    """

    def __init__(self, u: np.ndarray):
        self.u, self.i = u, 0

    def uniform(self, lo=0.0, hi=1.0) -> np.ndarray:
        """[m] float32, uniform in [lo, hi) (lo, hi scalars or [m])."""
        if self.i >= self.u.shape[1]:
            raise RuntimeError("More draws than reserved columns; raise _N_COMMON or _N_CLASS.")
        v = self.u[:, self.i]
        self.i += 1
        return (lo + (np.asarray(hi, F32) - lo) * v).astype(F32)

    def uniforms(self, k: int, lo=0.0, hi=1.0) -> np.ndarray:
        """[m, k]: k draws at once."""
        return np.stack([self.uniform(lo, hi) for _ in range(k)], 1)

    def jitter(self, std) -> np.ndarray:
        """Zero-mean, bounded, with the given std (uniform)."""
        return self.uniform(-_SQRT3 * std, _SQRT3 * std)

    def flag(self, p) -> np.ndarray:
        return self.uniform() < p

    def angle(self) -> np.ndarray:
        return self.uniform(0.0, 2 * np.pi)

    def coeffs(self, n: int, amplitude) -> np.ndarray:
        """[m, n] complex harmonic coefficients with random amplitude (<= amplitude) and phase."""
        a = np.stack([self.uniform() for _ in range(n)], 1) * np.asarray(amplitude, F32)[..., None]
        return a * np.exp(1j * np.stack([self.angle() for _ in range(n)], 1))


def _hue_gains(st: _Stream, std: float) -> np.ndarray:
    """[m, 3] log gains with the given std along the warm axis (a third of it along the tint)."""
    return st.jitter(std)[:, None] * _WARM + st.jitter(std / 3)[:, None] * _TINT


@dataclasses.dataclass
class _Scene:
    """What a class painter gets: pixel grid, light, its own random numbers and the knobs."""

    x: np.ndarray
    y: np.ndarray
    light: np.ndarray  # [m, 3] unit vector towards the light
    st: _Stream
    noise: Dict[str, np.ndarray]  # name -> [m, count, L, L] white noise
    d: Difficulty
    _fields: Dict[Tuple[str, int], np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def m(self) -> int:
        return self.light.shape[0]

    @property
    def pixel(self) -> float:
        return 1.0 / self.x.shape[1]

    @property
    def size(self) -> int:
        return self.x.shape[1]

    def field(self, name: str, k: int) -> np.ndarray:
        """Unit-variance smooth texture [m, S, S] from noise field `k` of the given scale (cached:
        callers must not modify it)."""
        if (name, k) not in self._fields:
            self._fields[name, k] = R.smooth_field(self.noise[name][:, k], self.size)
        return self._fields[name, k]

    def low(self, name: str, k: int, grid: Optional[str] = None) -> np.ndarray:
        """Noise field `k` kept at low resolution [m, L, L] (on the finer grid of scale `grid` if
        given), scaled so that `R.upsample` to S makes it a unit-variance texture: smooth terms
        are cheaper to compute there, then upsampled once."""
        noise = self.noise[name][:, k]
        if grid is None:
            return noise * R.noise_gain(self.size, noise.shape[-1])
        fine = _FIELDS[grid][1]  # already smooth on that grid: upsampling to S keeps its variance
        return R.upsample(noise * R.noise_gain(fine, noise.shape[-1]), fine)

    def colour(self, base, std=1.0) -> np.ndarray:
        """[m, 3] per-image variation of a base colour (hue and brightness)."""
        gains = _hue_gains(self.st, self.d.colour_jitter * std) + self.st.jitter(0.08)[:, None]
        return (np.asarray(base, F32) * np.exp(gains)).astype(F32)


def _mucosa(sc: _Scene, base, vessels) -> Tuple[np.ndarray, np.ndarray]:
    """Textured mucosa with a vessel network; returns (image [m,3,S,S], base colour [m,3]).

    Vessels are the zero-crossings of a smooth noise field: a branching, looping network like the
    submucosal vessels that show through healthy colon, faded in and out by a coarser field.
    The smooth terms (tone, redness, vessel visibility) are built at low resolution.
    """
    colour = sc.colour(base)
    t = sc.d.texture_strength
    tone = 1.0 + t * (0.07 * sc.low("coarse", 0, "medium") + 0.05 * sc.low("medium", 0))
    redness = (t * 0.035) * sc.low("coarse", 1, "medium")
    vis = R.ramp(0.5 + 0.5 * sc.low("coarse", 2, "medium")) * R.col(np.asarray(vessels, F32) * t)
    layers = R.upsample(np.stack([tone, redness, vis], 1), sc.size)  # [m, 3, S, S]
    layers[:, 2] *= layers[:, 0]
    across = np.square(sc.field("medium", 1) * (1 / 0.2))  # (field / half-width)^2
    np.subtract(1.0, across, out=across)
    np.clip(across, 0.0, 1.0, out=across)
    layers[:, 2] *= np.square(across)  # a smooth bump, cheaper than a Gaussian
    ink = np.array([0.15, 0.45, 0.40], F32)  # vessels absorb green and blue most
    redder = np.broadcast_to(np.array([1.0, -0.6, -0.6], F32), colour.shape)
    return R.compose(np.stack([colour, redder, -colour * ink], 2), layers), colour


def _stain(img: np.ndarray, density: np.ndarray, tint: np.ndarray) -> np.ndarray:
    """Indigo carmine absorbs red: multiply by a per-image transmission `tint` [m,3] ** density.

    Blue passes unchanged (tint 1), so only the red and green planes are touched.
    """
    log_tint = np.log(tint)
    for k in range(2):
        img[:, k] *= np.exp(density * R.col(log_tint[:, k]))
    return img


def _patches(sc: _Scene, amount) -> np.ndarray:
    """[m, S, S] in [0, amount]: broad patches (dye spread over the mucosa), drawn at low res."""
    return R.upsample(R.ramp(0.5 + 0.6 * sc.low("coarse", 3, "medium")) * R.col(amount), sc.size)


def _dye_tint(sc: _Scene) -> np.ndarray:
    t = [sc.st.uniform(0.35, 0.5), sc.st.uniform(0.62, 0.78)]
    t = np.stack(t, 1) * np.exp(sc.st.jitter(sc.d.colour_jitter)[:, None])
    return np.concatenate([t, np.ones((sc.m, 1), F32)], 1)


def _severity(sc: _Scene, subtle_fraction: float) -> np.ndarray:
    """Latent severity in [0, 1]: the subtle fraction lies in [0, 0.2], the rest in [0.2, 1]."""
    subtle = sc.st.flag(subtle_fraction)
    s = sc.st.uniform()
    return np.where(subtle, 0.2 * s, 0.2 + 0.8 * s).astype(F32)


def _lerp(lo_hi, t):
    """lo + (hi - lo) * t as float32: a knob's range read at severity t."""
    return (lo_hi[0] + (lo_hi[1] - lo_hi[0]) * np.asarray(t)).astype(F32)


def _flat(colour, shade: np.ndarray) -> np.ndarray:
    """An image of one colour per image ([m,3] or [3]) times a shading field [m,S,S]."""
    return R.rgb(colour) * shade[:, None]


def _outline(sc: _Scene, frame: R.Frame, coeffs, first_order: int):
    """(u, v, dist) of a lobulated outline: the frame's coordinates divided by its radius R(phi).

    dist < 1 inside; `coeffs` [m, k] are the radius harmonics from `first_order` on.
    """
    u, v = frame.uv(sc.x, sc.y)
    dist = np.sqrt(u * u + v * v)
    rad = 1.0 + R.harmonics(R.unit_phase(u, v, dist), coeffs, first_order)
    inv = 1.0 / rad
    u *= inv
    v *= inv
    dist *= inv
    return u, v, dist


def _dyed_lifted_polyp(sc: _Scene) -> np.ndarray:
    st, d = sc.st, sc.d
    sev = _severity(sc, d.dyed_subtle_fraction)  # low: a flat, small bleb, like a resection site
    img, _ = _mucosa(sc, _COLON, st.uniform(0.2, 0.8))
    tint = _dye_tint(sc)
    r = _lerp((0.12, 0.4), np.clip(sev + st.jitter(0.15), 0, 1))
    aspect, height = st.uniform(0.65, 1.0), _lerp(d.bleb_height_range, sev)
    frame = R.Frame.ellipse(st.jitter(0.09), st.jitter(0.09), st.angle(), r, r * aspect)
    un, vn, dist = _outline(sc, frame, st.coeffs(3, 0.05), 2)
    spread = _patches(sc, st.uniform(0.2, 0.7))
    _stain(img, spread + 0.6 * np.exp(np.clip(1.0 - dist, -10, 0) * 2.5), tint)
    bleb = _flat([0.84, 0.86, 0.92], 1.0 + 0.04 * sc.field("fine", 1))
    _stain(bleb, R.col(st.uniform(0.6, 1.3)) * (1.0 + 0.2 * sc.field("medium", 2)), tint)
    on_top = np.flatnonzero(st.flag(np.where(sev < 0.2, 0.2, 0.6)))  # the polyp, pink on blue
    px, py, pa = st.jitter(0.15), st.jitter(0.15), st.angle()
    if len(on_top):
        pu, pv = R.local_coords(
            un[on_top], vn[on_top], px[on_top], py[on_top], pa[on_top], 0.4, 0.32
        )
        polyp = R.edge((1 - np.sqrt(pu * pu + pv * pv)) * 0.1, sc.pixel)
        polyp *= 0.5 + 0.1 * sc.field("fine", 0)[on_top]
        bleb[on_top] = R.blend(bleb[on_top], R.rgb([0.80, 0.50, 0.55]), polyp)
    diffuse, spec = R.dome_shading(un, vn, height, sc.light)
    bleb *= diffuse[:, None]
    bleb += (spec * R.col(st.uniform(0.3, 0.8) * np.clip(height, 0, 1)))[:, None]
    inside = R.edge((1.0 - dist) * R.col(r * aspect), sc.pixel)
    return R.blend(img, bleb, inside * R.ramp((1.0 - dist) * 4.0 + 0.3))


def _dyed_resection_margin(sc: _Scene) -> np.ndarray:
    st, d = sc.st, sc.d
    sev = _severity(sc, d.dyed_subtle_fraction)  # low: small, smooth-edged, few cautery marks
    img, _ = _mucosa(sc, _COLON, st.uniform(0.2, 0.8))
    tint = _dye_tint(sc)
    r = _lerp((0.1, 0.32), np.clip(sev + st.jitter(0.15), 0, 1))
    aspect = st.uniform(0.6, 1.0)
    frame = R.Frame.ellipse(st.jitter(0.09), st.jitter(0.09), st.angle(), r, r * aspect)
    un, vn, dist = _outline(sc, frame, st.coeffs(2, 0.08), 2)
    ragged = R.col(_lerp(d.margin_raggedness_range, sev))
    dist *= 1.0 - ragged * (0.6 * sc.field("medium", 3) + 0.5 * sc.field("fine", 1))  # cut edge
    spread = _patches(sc, st.uniform(0.3, 0.8))
    _stain(img, spread + 0.8 * np.exp(np.clip(1.0 - dist, -10, 0) * 2.0), tint)
    base = _flat([0.80, 0.83, 0.88], 1.0 + 0.08 * sc.field("fine", 1))
    _stain(base, R.col(st.uniform(0.5, 1.1)) * (1.0 + 0.25 * sc.field("medium", 2)), tint)
    dots = R.ramp((sc.field("fine", 0) - R.col(_lerp((2.6, 1.4), sev))) * 2.5)
    R.blend(base, R.rgb([0.50, 0.08, 0.08]), dots * 0.9)  # cauterised vessels, blood
    diffuse, _ = R.dome_shading(-un, -vn, st.uniform(0.1, 0.4), sc.light)  # a shallow crater
    base *= diffuse[:, None]
    rim = R.line((dist - 1.0) * R.col(r * aspect), 0.006, sc.pixel) * R.col(_lerp((0.3, 0.8), sev))
    R.blend(base, R.rgb(np.array([0.5, 0.3, 0.45], F32) * tint), rim)  # pooled dye, burn marks
    return R.blend(img, base, R.edge((1.0 - dist) * R.col(r * aspect), sc.pixel))


def _zline(sc: _Scene, esophagitis: bool) -> np.ndarray:
    """Shared by normal-z-line and esophagitis: the two differ only in the erosions and redness."""
    st, d = sc.st, sc.d
    sev = _severity(sc, d.subtle_fraction) if esophagitis else np.zeros(sc.m, F32)
    img, squamous = _mucosa(sc, _SQUAMOUS, st.uniform(0.1, 0.5))
    gastric = sc.colour(_GASTRIC_RED)
    frame = R.Frame.ellipse(st.uniform(-0.15, 0.15), st.uniform(-0.15, 0.15), st.angle(), 1.0,
                            st.uniform(0.7, 1.0))  # the oesophagus seen obliquely
    u, v = frame.uv(sc.x, sc.y)
    dist = np.sqrt(u * u + v * v)
    r0 = st.uniform(0.15, 0.28)
    coeffs = st.coeffs(5, _lerp(d.zline_irregularity_range, st.uniform()) * 0.6)
    boundary = R.col(r0) * (1.0 + R.harmonics(R.unit_phase(u, v, dist), coeffs, 2))
    gastric_mask = R.ramp((boundary - dist) / R.col(st.uniform(0.006, 0.02)) + 0.5)
    n_tongues = np.floor(st.uniform(0, 2.99 if not esophagitis else 1.99))
    for k in range(2):  # broad, smooth, tapering "tongues" of gastric mucosa: a normal variant
        a, w, length = st.angle(), st.uniform(0.025, 0.06), st.uniform(0.03, 0.1)
        on = k < n_tongues
        if not on.any():
            continue
        t = frame.along(sc.x, sc.y, np.cos(a) / length, np.sin(a) / length) - R.col(r0 / length)
        across = frame.along(sc.x, sc.y, -np.sin(a) / w, np.cos(a) / w)
        tongue = np.exp(-np.square(across / (1.0 - 0.8 * np.clip(t, 0, 1))))  # tapers to a tip
        tongue *= np.clip((1.0 - t) * 3.0, 0.0, R.col(on))
        tongue *= np.clip(t * length[:, None, None] + r0[:, None, None], 0, 0.01) * 100.0
        np.maximum(gastric_mask, tongue, out=gastric_mask)
    redness = st.uniform(0.0, d.zline_redness_max) + 0.3 * sev
    halo = R.col(redness) * np.exp(np.clip(boundary - dist, -10, 0) * 20.0)
    R.blend(img, img * R.rgb(gastric / squamous), np.maximum(gastric_mask, halo))
    if esophagitis:
        _erosions(sc, img, frame, u, v, r0, coeffs, sev)
        _erythema(sc, img, boundary, dist, r0, squamous, sev)
    lumen = st.uniform(0.3, 0.6) * r0
    depth = 1.0 - 0.9 * R.ramp((R.col(lumen * 1.3) - dist) / R.col(lumen * 0.8))
    depth *= 0.6 + 0.4 * R.ramp(dist / R.col(r0 * 1.6))
    img *= depth[:, None]
    return img


def _erythema(sc: _Scene, img, boundary, dist, r0, squamous, sev) -> None:
    """Patchy redness of the squamous mucosa above the z-line, fading outwards: the inflamed,
    oedematous band around reflux erosions. A normal z-line's reddening (`zline_redness_max`) is
    narrower and fainter, so only the severer cases stand apart; the mild ones overlap it."""
    reach = R.col(r0 * sc.st.uniform(0.4, 0.9))
    band = np.exp(np.clip(boundary - dist, -10, 0) / reach)
    band *= R.ramp(0.5 + 0.7 * sc.field("medium", 2)) * R.col(_lerp(sc.d.erythema_range, sev))
    R.blend(img, img * R.rgb(sc.colour(_INFLAMED) / squamous), band)


def _erosions(sc: _Scene, img, frame: R.Frame, u, v, r0, coeffs, sev) -> None:
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
    length = st.uniforms(k, 0.5, 1.2) * _lerp((0.04, 0.16), sev)[:, None]
    width = st.uniforms(k, 0.6, 1.3) * _lerp(d.erosion_width_range, sev)[:, None]
    bend = st.uniforms(k, -2.0, 2.0)
    rank = np.argsort(np.argsort(st.uniforms(k), axis=1), axis=1)  # which sectors have one
    alpha = st.uniforms(k, 0.7, 1.0) * _lerp(d.erosion_contrast_range, sev)[:, None]
    alpha = alpha * (rank < (1 + np.floor(sev * 7.99))[:, None])
    coated = st.uniforms(k) < _lerp(d.fibrin_range, sev)[:, None]  # a fibrin-covered centre
    wide = np.maximum(width, 0.7 * sc.pixel)  # as R.line: thinner than a pixel -> fainter
    inv_len, inv_w = 1.0 / length, 1.0 / wide
    params = {  # per (image, sector), looked up by every pixel of that sector
        "cos_l": np.cos(a) * inv_len, "sin_l": np.sin(a) * inv_len, "start_l": start * inv_len,
        "cos_w": np.cos(a) * inv_w, "sin_w": np.sin(a) * inv_w, "bend_w": bend * length**2 * inv_w,
        "red": alpha * width * inv_w,
        "fibrin": alpha * coated * np.minimum(d.fibrin_width * width * inv_w, 1.0),
    }
    params = np.stack([v.astype(F32) for v in params.values()], 1).reshape(m, -1)  # [m, 8 * k]
    for i in range(0, m, 4):  # a few images at a time: the lookups stay in cache
        _erosion_sector(img[i : i + 4], u[i : i + 4], v[i : i + 4], params[i : i + 4], k, d.fibrin_width)


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
    R.blend(img, R.rgb([0.78, 0.16, 0.14]), np.exp(-across) * profile * red_a)
    fibrin = np.exp(across * F32(-1 / fibrin_width**2)) * profile * fibrin_a
    R.blend(img, R.rgb([0.93, 0.87, 0.74]), fibrin)


def _normal_cecum(sc: _Scene) -> np.ndarray:
    st = sc.st
    img, _ = _mucosa(sc, _CECUM, st.uniform(0.7, 1.4))
    fx, fy = st.uniform(-0.2, 0.2), st.uniform(-0.2, 0.2)
    frame = R.Frame.ellipse(fx, fy, st.angle(), 1.0, st.uniform(0.6, 1.0))
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
        window = np.clip((facing - R.col(np.cos(span))) * 3.0, 0.0, 1.0)
        shift = R.col(st.uniform(-0.6, 0.6) * spacing)  # folds are not concentric
        t = (wobbly - R.col(r + k * spacing) - shift * facing) * R.col(1.0 / w)
        shade += window * (0.18 * np.exp(-t * t) - 0.35 * np.exp(-np.square(t - 1.6)))
    img *= shade[:, None]
    ox, oy = fx + st.jitter(0.04), fy + st.jitter(0.04)
    rho, span, thick = st.uniform(0.02, 0.06), st.uniform(0.5, 1.4), st.uniform(0.005, 0.014)
    orifice = R.Frame.ellipse(ox, oy, st.angle(), 1.0, 1.0)
    ou, ov = orifice.uv(sc.x, sc.y)
    odist = np.sqrt(ou * ou + ov * ov) + 1e-6
    window = np.clip((ou / odist - R.col(np.cos(span))) * 5.0, 0.0, 1.0)  # a crescent or slit
    lip = R.line(odist - R.col(rho + thick), thick, sc.pixel)
    R.blend(img, R.rgb([0.95, 0.80, 0.74]), 0.35 * window * lip)
    slit = R.line(odist - R.col(rho), thick, sc.pixel)
    R.blend(img, R.rgb([0.30, 0.10, 0.09]), 0.9 * window * slit)
    return img


def _normal_pylorus(sc: _Scene) -> np.ndarray:
    st = sc.st
    img, _ = _mucosa(sc, _GASTRIC, st.uniform(0.0, 0.3))
    r = st.uniform(0.03, 0.1)
    frame = R.Frame.ellipse(st.uniform(-0.12, 0.12), st.uniform(-0.12, 0.12), st.angle(), r,
                            r * st.uniform(0.6, 1.0))
    u, v = frame.uv(sc.x, sc.y)
    dist = np.sqrt(u * u + v * v)
    folds = R.harmonics(R.unit_phase(u, v, dist), st.coeffs(6, 0.25), 3)  # converge on the opening
    shade = 1.0 + folds * np.clip(dist - 1.0, 0.0, 1.0) * np.exp(np.clip(1.0 - dist, -30, 0) * 0.2)
    shade += 0.15 * np.exp(-np.square((dist - 1.7) * (1 / 0.6)))  # the raised pyloric ring
    shade *= 1.0 - 0.92 * R.ramp((1.1 - dist) * 2.0)
    shade *= 0.6 + 0.4 * R.ramp(dist * R.col(r / 0.35))
    img *= shade[:, None]
    return img


def _polyp(sc: _Scene) -> np.ndarray:
    st = sc.st
    img, base = _mucosa(sc, _COLON, st.uniform(0.4, 1.0))
    r, aspect, height = st.uniform(0.07, 0.28), st.uniform(0.7, 1.0), st.uniform(0.6, 2.0)
    frame = R.Frame.ellipse(st.jitter(0.13), st.jitter(0.13), st.angle(), r, r * aspect)
    un, vn, dist = _outline(sc, frame, st.coeffs(4, 0.07), 2)  # lobulated outline
    diffuse, spec = R.dome_shading(un, vn, height, sc.light, ambient=0.45)
    redder = np.stack([np.ones(sc.m, F32), st.uniform(0.72, 0.92), st.uniform(0.78, 0.98)], 1)
    tissue = base * redder
    polyp = _flat(tissue, (1.0 + 0.08 * sc.field("fine", 0)) * diffuse)
    polyp += (spec * R.col(st.uniform(0.25, 0.7)))[:, None]
    lx, ly = sc.light[:, 0], sc.light[:, 1]
    away = np.clip(-(un * R.col(lx) + vn * R.col(ly)) / (dist + 1e-6) * 3.0, 0.0, 1.0)
    rim = (dist - 1.0) * R.col(r / 0.015)
    shadow = away * np.exp(-np.square(np.clip(rim, 0.0, 10.0))) * np.clip(rim * 10.0, 0.0, 1.0)
    img *= (1.0 - 0.4 * shadow)[:, None]  # contact shadow on the side away from the light
    return R.blend(img, polyp, R.edge((1.0 - dist) * R.col(r * aspect), sc.pixel))


def _ulcerative_colitis(sc: _Scene) -> np.ndarray:
    st = sc.st
    sev = st.uniform()
    img, _ = _mucosa(sc, _INFLAMED, st.uniform(0.0, 0.25) * (1 - sev))  # vessels vanish
    mottle = R.ramp(0.5 + 0.5 * sc.low("medium", 3)) * R.col(_lerp((0.2, 0.6), sev))
    mottle = R.upsample(mottle, sc.size)  # patchy erythema
    R.blend(img, R.rgb([0.68, 0.17, 0.16]), mottle)
    img *= (1.0 + R.col(_lerp((0.04, 0.12), sev)) * sc.field("fine", 1))[:, None]  # granular
    spots = sc.field("fine", 0)
    bleeding = R.ramp((spots - R.col(_lerp((2.4, 1.4), sev))) * 2.0)
    R.blend(img, R.rgb([0.45, 0.04, 0.05]), 0.9 * bleeding)
    ulcers = R.ramp((-spots - R.col(_lerp((2.3, 1.1), sev))) * 2.5)  # fibrin-covered ulcers
    R.blend(img, R.rgb([0.93, 0.90, 0.78]), 0.9 * ulcers)
    return img


_PAINTERS: Dict[int, Callable[[_Scene], np.ndarray]] = {
    0: _dyed_lifted_polyp,
    1: _dyed_resection_margin,
    2: lambda sc: _zline(sc, esophagitis=True),
    3: _normal_cecum,
    4: _normal_pylorus,
    5: lambda sc: _zline(sc, esophagitis=False),
    6: _polyp,
    7: _ulcerative_colitis,
}


def _camera_params(st: _Stream, d: Difficulty) -> SimpleNamespace:
    """Everything outside the scene: light, colour rendition, optics, sensor and video overlays."""
    p = SimpleNamespace()
    tilt, azimuth = st.uniform(0.1, 0.6), st.angle()
    p.light = np.stack([tilt * np.cos(azimuth), tilt * np.sin(azimuth), np.sqrt(1 - tilt**2)], 1)
    p.vignette, p.gradient = st.uniform(0.5, 3.0), st.uniform(0.0, 0.6)
    p.light_x, p.light_y = st.jitter(0.08), st.jitter(0.08)
    p.brightness = np.exp(st.jitter(d.brightness_jitter))
    gains = np.exp(_hue_gains(st, d.colour_jitter))
    sat = np.exp(st.jitter(d.saturation_jitter))[:, None, None]
    # White balance, then saturation about the grey axis, as one 3x3 matrix per image.
    # The camera's output is in 0..255 from here on: quantising needs no extra pass.
    p.colour_matrix = (255 * (sat * np.eye(3) + (1 - sat) / 3) * gains[:, None, :]).astype(F32)
    p.lumen, lumen_angle, lumen_at = st.flag(d.lumen_prob), st.angle(), st.uniform(0.15, 0.45)
    p.lumen_x, p.lumen_y = lumen_at * np.cos(lumen_angle), lumen_at * np.sin(lumen_angle)
    p.lumen_r, p.lumen_dark = st.uniform(0.06, 0.2), st.uniform(0.5, 0.9)
    specular = st.flag(d.specular_prob)
    p.glints = [  # (on, x, y, radius, elongation): axis-aligned small ellipses
        (st.flag(0.6) & specular, st.uniform(-0.4, 0.4), st.uniform(-0.4, 0.4),
         st.uniform(0.004, 0.014), np.exp(st.jitter(0.4)))
        for _ in range(5)
    ]
    p.blur, p.blur_sigma = st.flag(d.blur_prob), st.uniform(*d.blur_sigma_range)
    p.noise = d.noise_std * st.uniform(0.5, 1.5)
    style = np.floor(st.uniform(0, len(R.FIELD_STOPS) - 1e-3)).astype(np.int64)
    p.field_stop = np.where(st.flag(d.border_prob), style, len(R.FIELD_STOPS))  # last: none
    p.grain_x, p.grain_y = st.uniform(), st.uniform()
    p.text = st.flag(d.text_prob)
    p.text_x, p.text_y = st.uniform(-0.49, -0.47), st.uniform(-0.48, -0.45)
    p.cell, lines = st.uniform(0.007, 0.011), np.floor(st.uniform(2, 4.99))
    p.line_chars = np.stack(
        [np.floor(st.uniform(3, 12.99)) * (k < lines) for k in range(_TEXT_BITS[0])], 1
    ).astype(np.int32)
    p.pip, p.pip_size = st.flag(d.pip_prob), st.uniform(0.18, 0.26)
    p.pip_margin, p.pip_line = st.uniform(0.005, 0.03), st.uniform(0.006, 0.012)
    return p


def _split_id(split: str) -> int:
    return int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:4], "little")


def _randomness(labels, indices, seed, split) -> SimpleNamespace:
    """Per-image random numbers, each image from its own generator keyed on (seed, split, index,
    label).

    None depends on the image size, so one image shows the same scene at every resolution.
    Texture noise is uniform, scaled to unit variance: once smoothed it is as Gaussian as normal
    noise, and several times faster to draw.
    """
    n = len(labels)
    n_u = _N_COMMON + _N_CLASS
    sizes = [c * s * s for c, s in _FIELDS.values()]
    n_bits = int(np.prod(_TEXT_BITS))
    draws = np.empty((n, n_u + sum(sizes)), F32)
    text = np.empty((n, (n_bits + 7) // 8), np.uint8)
    split_id = _split_id(split)
    for i in range(n):
        key = np.random.SeedSequence([seed, split_id, int(indices[i]), int(labels[i])])
        g = np.random.Generator(np.random.PCG64(key))
        draws[i] = g.random(draws.shape[1], dtype=F32)
        text[i] = np.frombuffer(g.bytes(text.shape[1]), np.uint8)
    noise, offset = {}, n_u
    for (name, (c, s)), k in zip(_FIELDS.items(), sizes):
        noise[name] = (draws[:, offset : offset + k].reshape(n, c, s, s) - 0.5) * F32(2 * _SQRT3)
        offset += k
    bits = np.unpackbits(text, axis=1)[:, :n_bits].reshape((n,) + _TEXT_BITS).astype(bool)
    return SimpleNamespace(u=draws[:, :n_u], noise=noise, text=bits)


def _render(label: int, indices, size, seed, split, difficulty) -> np.ndarray:
    """uint8 [m, S, S, 3] images of one class: scene, then camera, then quantisation.

    Batching by class gives each painter all the images of its class in the chunk at once, so
    numpy's per-call overhead is shared by many images.
    """
    labels = np.full(len(indices), label)
    rnd = _randomness(labels, indices, seed, split)
    x, y = R.grid(size)  # [1, S] and [S, 1]
    cam = _camera_params(_Stream(rnd.u[:, :_N_COMMON]), difficulty)
    st = _Stream(rnd.u[:, _N_COMMON:])
    img = _PAINTERS[label](_Scene(x, y, cam.light, st, rnd.noise, difficulty))
    assert img.dtype == F32, f"{CLASS_NAMES[label]} painted {img.dtype}: float64 halves the speed"
    img = R.camera(img, cam, rnd.text, _LOWER_GI_MASK[labels], x, y)  # 0..255
    np.clip(img, 0.0, 255.0, out=img)
    out = np.empty((len(labels), size, size, 3), np.uint8)
    for k in range(3):  # per-plane copies (truncating casts): one channels-last transpose is slower
        out[..., k] = img[:, k]
    return out


def generate(
    labels: np.ndarray,
    image_size: int,
    seed: int = 0,
    split: str = "train",
    difficulty: Difficulty = DEFAULT_DIFFICULTY,
    start_index: int = 0,
) -> np.ndarray:
    """uint8 [N, image_size, image_size, 3] RGB; image i depends only on (seed, split,
    start_index + i, labels[i]), so a split regenerates identically, in chunks or in one go."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise ValueError(
            f"labels must lie in [0, {len(CLASS_NAMES)}), got {labels.min()}..{labels.max()}."
        )
    if int(image_size) != image_size or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}.")
    if int(seed) != seed or seed < 0 or int(start_index) != start_index or start_index < 0:
        raise ValueError(
            f"seed and start_index must be integers >= 0, got {seed!r}, {start_index!r}."
        )
    size = int(image_size)
    _raise_malloc_threshold()
    out = np.empty((len(labels), size, size, 3), np.uint8)
    chunk = max(1, _CHUNK_PIXELS // (size * size))
    with _single_threaded_blas():
        for label in np.unique(labels):
            where = np.flatnonzero(labels == label)
            for s in range(0, len(where), chunk):
                part = where[s : s + chunk]
                indices = int(start_index) + part
                out[part] = _render(int(label), indices, size, int(seed), split, difficulty)
    return out


def _single_threaded_blas():
    """Run BLAS on one thread while rendering.

    The matrix products here are small and many; a second BLAS thread buys nothing and, when the
    other core is busy, stalls every product (measured: 4x slower). One thread also keeps the
    rounding, hence the pixels, the same whatever the machine's thread settings.
    """
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


@functools.lru_cache(maxsize=1)
def _raise_malloc_threshold() -> None:
    """Allocate and free one 16 MB block, once per process.

    glibc serves blocks above its mmap threshold with fresh pages and returns them on free, so
    every numpy temporary of a few MB is page-faulted in again: half of the run time here. Freeing
    a block this large raises glibc's dynamic threshold above all our temporaries (as any program
    that frees such a block does); on other allocators it is a no-op.
    """
    block = np.ones(2**22, np.float32)
    del block


def _balanced_labels(per_class: int) -> np.ndarray:
    """0, 1, ..., 7, 0, 1, ...: balanced at every prefix of 8."""
    return np.tile(np.arange(len(CLASS_NAMES), dtype=np.int32), int(per_class))


def load(
    image_size: int = 128,
    seed: int = 0,
    split_sizes: Optional[dict] = None,
    difficulty: Difficulty = DEFAULT_DIFFICULTY,
) -> DatasetSource:
    """The embedded dataset as in-memory splits; `split_sizes` counts images per class."""
    sizes = dict(DEFAULT_SPLIT_SIZES if split_sizes is None else split_sizes)
    unknown = set(sizes) - set(SPLIT_NAMES)
    if unknown:
        raise ValueError(f"split_sizes keys must be among {SPLIT_NAMES}, got {sorted(unknown)}.")
    splits = {}
    for name, per_class in sizes.items():
        if int(per_class) != per_class or per_class < 0:
            raise ValueError(f"split_sizes[{name!r}] must be an integer >= 0, got {per_class!r}.")
        labels = _balanced_labels(per_class)
        splits[name] = Split(labels, images=generate(labels, image_size, seed, name, difficulty))
    return DatasetSource(name="synthetic", class_names=CLASS_NAMES, splits=splits, root=None)


def _save_atomic(image, path: str, fmt: str, **kwargs) -> None:
    with atomic_path(path, suffix=os.path.splitext(path)[1]) as tmp:
        image.save(tmp, format=fmt, **kwargs)


def write_folder(
    out_dir: str,
    per_class: int = 100,
    image_size: int = 256,
    seed: int = 0,
    difficulty: Difficulty = DEFAULT_DIFFICULTY,
) -> str:
    """Write JPEGs (quality 95) in the Kvasir-v2 layout, so the file-based loaders can be tested
    on them: out_dir/kvasir-dataset-v2/<class>/<class>-<index:05d>.jpg. Returns that folder."""
    from PIL import Image

    root = os.path.join(out_dir, "kvasir-dataset-v2")
    for name in CLASS_NAMES:
        os.makedirs(os.path.join(root, name), exist_ok=True)
    labels = _balanced_labels(per_class)
    chunk = 64
    for s in range(0, len(labels), chunk):
        images = generate(labels[s : s + chunk], image_size, seed, "folder", difficulty, s)
        for i, image in enumerate(images, start=s):
            name = CLASS_NAMES[labels[i]]
            path = os.path.join(root, name, f"{name}-{i // len(CLASS_NAMES):05d}.jpg")
            _save_atomic(Image.fromarray(image), path, "JPEG", quality=95)
    return root


def sample_grid(
    path: str,
    per_class: int = 6,
    image_size: int = 128,
    seed: int = 0,
    difficulty: Difficulty = DEFAULT_DIFFICULTY,
) -> str:
    """A PNG with one row per class, labelled on the left: the first training images of each
    class (those `load` returns first). Returns `path`."""
    from PIL import Image, ImageDraw

    labels = _balanced_labels(per_class)
    images = generate(labels, image_size, seed, "train", difficulty)
    label_w, gap, k = 160, 2, len(CLASS_NAMES)
    canvas = Image.new(
        "RGB", (label_w + per_class * (image_size + gap), k * (image_size + gap)), (24, 24, 24)
    )
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(CLASS_NAMES):
        top = c * (image_size + gap)
        draw.text((6, top + image_size // 2 - 6), f"{c} {name}", fill=(235, 235, 235))
        for j in range(per_class):
            tile = Image.fromarray(images[j * k + c])
            canvas.paste(tile, (label_w + j * (image_size + gap), top))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _save_atomic(canvas, path, "PNG")
    return path

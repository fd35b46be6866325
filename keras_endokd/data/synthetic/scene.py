"""The scene every class painter starts from: pixel grid, light, textures, mucosa and dye.

A `Scene` is what a painter in `class_painters` receives for m images of one class: the
resolution-free pixel grid (x [1, S], y [S, 1], in image widths, see `drawing`), the direction
towards the light [m, 3], the class's own `streams.Stream` of uniforms, the white-noise grids it
smooths into textures, and the `Difficulty`. On top of it sit the shared tissue models:

- `mucosa`: pinkish-red mucosa with tone and redness variation and a vessel network, the
  submucosal vessels that show through healthy colon (their contrast scales with
  `Difficulty.texture_strength`);
- `stain`, `dye_tint`, `patches`: indigo carmine, which absorbs red and green, as a per-image
  transmission raised to a density field;
- `severity`, `lerp`: the latent severity that makes two pairs of classes overlap (see
  `difficulty`), and a knob's range read at it;
- `outline`: the coordinates of a lobulated shape, for polyps, blebs and resection sites.

Colours are linear RGB in [0, 1]; every image is float32 [m, 3, S, S].
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np

from keras_endokd.data.synthetic import drawing as draw
from keras_endokd.data.synthetic.difficulty import Difficulty
from keras_endokd.data.synthetic.streams import NOISE_FIELDS, Stream

F32 = np.float32

# Base colours (linear RGB, 0..1) of the mucosae, before per-image variation.
COLON = (0.86, 0.52, 0.44)
CECUM = (0.88, 0.58, 0.50)
GASTRIC = (0.86, 0.45, 0.32)
SQUAMOUS = (0.87, 0.71, 0.65)
GASTRIC_RED = (0.76, 0.30, 0.24)
INFLAMED = (0.80, 0.35, 0.30)


@dataclasses.dataclass
class Scene:
    """What a class painter gets: pixel grid, light, its own random numbers and the knobs."""

    x: np.ndarray
    y: np.ndarray
    light: np.ndarray  # [m, 3] unit vector towards the light
    st: Stream
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
            self._fields[name, k] = draw.smooth_field(self.noise[name][:, k], self.size)
        return self._fields[name, k]

    def low(self, name: str, k: int, grid: Optional[str] = None) -> np.ndarray:
        """Noise field `k` kept at low resolution [m, L, L] (on the finer grid of scale `grid` if
        given), scaled so that `draw.upsample` to S makes it a unit-variance texture: smooth terms
        are cheaper to compute there, then upsampled once."""
        noise = self.noise[name][:, k]
        if grid is None:
            return noise * draw.noise_gain(self.size, noise.shape[-1])
        fine = NOISE_FIELDS[grid][1]  # smooth on that grid already: upsampling keeps its variance
        return draw.upsample(noise * draw.noise_gain(fine, noise.shape[-1]), fine)

    def colour(self, base, std=1.0) -> np.ndarray:
        """[m, 3] per-image variation of a base colour (hue and brightness)."""
        gains = self.st.hue_gains(self.d.colour_jitter * std) + self.st.jitter(0.08)[:, None]
        return (np.asarray(base, F32) * np.exp(gains)).astype(F32)


def mucosa(sc: Scene, base, vessels) -> Tuple[np.ndarray, np.ndarray]:
    """Textured mucosa with a vessel network; returns (image [m,3,S,S], base colour [m,3]).

    Vessels are the zero-crossings of a smooth noise field: a branching, looping network like the
    submucosal vessels that show through healthy colon, faded in and out by a coarser field.
    The smooth terms (tone, redness, vessel visibility) are built at low resolution.
    """
    colour = sc.colour(base)
    t = sc.d.texture_strength
    tone = 1.0 + t * (0.07 * sc.low("coarse", 0, "medium") + 0.05 * sc.low("medium", 0))
    redness = (t * 0.035) * sc.low("coarse", 1, "medium")
    vis = draw.ramp(0.5 + 0.5 * sc.low("coarse", 2, "medium"))
    vis = vis * draw.col(np.asarray(vessels, F32) * t)
    layers = draw.upsample(np.stack([tone, redness, vis], 1), sc.size)  # [m, 3, S, S]
    layers[:, 2] *= layers[:, 0]
    across = np.square(sc.field("medium", 1) * (1 / 0.2))  # (field / half-width)^2
    np.subtract(1.0, across, out=across)
    np.clip(across, 0.0, 1.0, out=across)
    layers[:, 2] *= np.square(across)  # a smooth bump, cheaper than a Gaussian
    ink = np.array([0.15, 0.45, 0.40], F32)  # vessels absorb green and blue most
    redder = np.broadcast_to(np.array([1.0, -0.6, -0.6], F32), colour.shape)
    return draw.compose(np.stack([colour, redder, -colour * ink], 2), layers), colour


def stain(img: np.ndarray, density: np.ndarray, tint: np.ndarray) -> np.ndarray:
    """Indigo carmine absorbs red: multiply by a per-image transmission `tint` [m,3] ** density.

    Blue passes unchanged (tint 1), so only the red and green planes are touched.
    """
    log_tint = np.log(tint)
    for k in range(2):
        img[:, k] *= np.exp(density * draw.col(log_tint[:, k]))
    return img


def patches(sc: Scene, amount) -> np.ndarray:
    """[m, S, S] in [0, amount]: broad patches (dye spread over the mucosa), drawn at low res."""
    spread = draw.ramp(0.5 + 0.6 * sc.low("coarse", 3, "medium")) * draw.col(amount)
    return draw.upsample(spread, sc.size)


def dye_tint(sc: Scene) -> np.ndarray:
    """[m, 3] transmission of indigo carmine per image (red and green absorbed, blue passed)."""
    t = [sc.st.uniform(0.35, 0.5), sc.st.uniform(0.62, 0.78)]
    t = np.stack(t, 1) * np.exp(sc.st.jitter(sc.d.colour_jitter)[:, None])
    return np.concatenate([t, np.ones((sc.m, 1), F32)], 1)


def severity(sc: Scene, subtle_fraction: float) -> np.ndarray:
    """Latent severity in [0, 1]: the subtle fraction lies in [0, 0.2], the rest in [0.2, 1]."""
    subtle = sc.st.flag(subtle_fraction)
    s = sc.st.uniform()
    return np.where(subtle, 0.2 * s, 0.2 + 0.8 * s).astype(F32)


def lerp(lo_hi, t):
    """lo + (hi - lo) * t as float32: a knob's range read at severity t."""
    return (lo_hi[0] + (lo_hi[1] - lo_hi[0]) * np.asarray(t)).astype(F32)


def flat(colour, shade: np.ndarray) -> np.ndarray:
    """An image of one colour per image ([m,3] or [3]) times a shading field [m,S,S]."""
    return draw.rgb(colour) * shade[:, None]


def outline(sc: Scene, frame: draw.Frame, coeffs, first_order: int):
    """(u, v, dist) of a lobulated outline: the frame's coordinates divided by its radius R(phi).

    dist < 1 inside; `coeffs` [m, k] are the radius harmonics from `first_order` on.
    """
    u, v = frame.uv(sc.x, sc.y)
    dist = np.sqrt(u * u + v * v)
    rad = 1.0 + draw.harmonics(draw.unit_phase(u, v, dist), coeffs, first_order)
    inv = 1.0 / rad
    u *= inv
    v *= inv
    dist *= inv
    return u, v, dist

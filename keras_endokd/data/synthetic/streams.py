"""The synthetic images' randomness: one generator per image, handed out in a fixed order.

Each image's random numbers come from its own PCG64 generator, seeded from (seed, split, index,
label) through `numpy.random.SeedSequence`, so an image is the same whether its split is drawn
whole or in pieces, in any batch, at any size: none of the numbers depends on the image size.

Per image, `randomness` draws in one go
- N_COMMON uniforms for the endoscope (light, colour rendition, optics, overlays: `optics`),
- N_CLASS uniforms for the class painter (`class_painters`),
- white-noise grids (count, L x L) per texture scale in NOISE_FIELDS, smoothed into textures later,
- the bits of the on-screen text glyphs (TEXT_BITS).
A `Stream` hands the uniforms out one column per draw in call order; since each painter always
draws the same things in the same order, a parameter's value for an image never depends on which
other images share its batch. The reserved counts only need to exceed what is drawn; changing
them, or the order of any draw, changes every image (and the shipped teachers' data key).
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np

F32 = np.float32
N_COMMON, N_CLASS = 80, 128  # uniforms reserved per image: endoscope, class painter
NOISE_FIELDS = {"coarse": (4, 5), "medium": (4, 14), "fine": (2, 36)}  # name: (count, L)
TEXT_BITS = (4, 12, 5, 3)  # lines, characters per line, glyph rows, glyph columns
SQRT3 = float(np.sqrt(3.0))
# Colour varies along a warm-cool axis and, less, a magenta-green one, in log RGB gains: tissue
# and white balance shift between orange and pink, never to green.
WARM, TINT = np.array([1.0, 0.0, -1.0], F32), np.array([0.3, -0.6, 0.3], F32)


class Stream:
    """Hands out one column of per-image uniforms per draw, in call order.

    Each painter always draws the same things in the same order, so a parameter's column (hence its
    value for a given image) never depends on which other images share the batch.
    """

    def __init__(self, u: np.ndarray):
        self.u, self.i = u, 0

    def uniform(self, lo=0.0, hi=1.0) -> np.ndarray:
        """[m] float32, uniform in [lo, hi) (lo, hi scalars or [m])."""
        if self.i >= self.u.shape[1]:
            raise RuntimeError("More draws than reserved columns; raise N_COMMON or N_CLASS.")
        v = self.u[:, self.i]
        self.i += 1
        return (lo + (np.asarray(hi, F32) - lo) * v).astype(F32)

    def uniforms(self, k: int, lo=0.0, hi=1.0) -> np.ndarray:
        """[m, k]: k draws at once."""
        return np.stack([self.uniform(lo, hi) for _ in range(k)], 1)

    def jitter(self, std) -> np.ndarray:
        """Zero-mean, bounded, with the given std (uniform)."""
        return self.uniform(-SQRT3 * std, SQRT3 * std)

    def flag(self, p) -> np.ndarray:
        return self.uniform() < p

    def angle(self) -> np.ndarray:
        return self.uniform(0.0, 2 * np.pi)

    def coeffs(self, n: int, amplitude) -> np.ndarray:
        """[m, n] complex harmonic coefficients with random amplitude (<= amplitude) and phase."""
        a = np.stack([self.uniform() for _ in range(n)], 1) * np.asarray(amplitude, F32)[..., None]
        return a * np.exp(1j * np.stack([self.angle() for _ in range(n)], 1))

    def hue_gains(self, std: float) -> np.ndarray:
        """[m, 3] log RGB gains: std along the warm-cool axis, a third of it along the tint one."""
        return self.jitter(std)[:, None] * WARM + self.jitter(std / 3)[:, None] * TINT


def split_id(split: str) -> int:
    """A 32-bit number for a split name (any string), part of every image's seed."""
    return int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:4], "little")


def randomness(labels, indices, seed, split) -> SimpleNamespace:
    """Per-image random numbers, each image from its own generator keyed on (seed, split, index,
    label).

    None depends on the image size, so one image shows the same scene at every resolution.
    Texture noise is uniform, scaled to unit variance: once smoothed it is as Gaussian as normal
    noise, and several times faster to draw.
    """
    n = len(labels)
    n_u = N_COMMON + N_CLASS
    sizes = [c * s * s for c, s in NOISE_FIELDS.values()]
    n_bits = int(np.prod(TEXT_BITS))
    draws = np.empty((n, n_u + sum(sizes)), F32)
    text = np.empty((n, (n_bits + 7) // 8), np.uint8)
    sid = split_id(split)
    for i in range(n):
        key = np.random.SeedSequence([seed, sid, int(indices[i]), int(labels[i])])
        g = np.random.Generator(np.random.PCG64(key))
        draws[i] = g.random(draws.shape[1], dtype=F32)
        text[i] = np.frombuffer(g.bytes(text.shape[1]), np.uint8)
    noise, offset = {}, n_u
    for (name, (c, s)), k in zip(NOISE_FIELDS.items(), sizes):
        noise[name] = (draws[:, offset : offset + k].reshape(n, c, s, s) - 0.5) * F32(2 * SQRT3)
        offset += k
    bits = np.unpackbits(text, axis=1)[:, :n_bits].reshape((n,) + TEXT_BITS).astype(bool)
    return SimpleNamespace(u=draws[:, :n_u], noise=noise, text=bits)

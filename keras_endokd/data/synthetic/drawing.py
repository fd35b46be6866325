"""Vectorised numpy drawing primitives of the synthetic endoscopy images: fields, shapes, shading.

Everything works on a batch of m images of one class:

- fields (masks, shading, textures) are float32 [m, S, S];
- colour images are float32 [m, 3, S, S], linear RGB in about [0, 1], as channel planes, so every
  per-pixel loop runs over a contiguous row (channel-last arrays with [m, 1, 1, 3] colours run
  several times slower);
- per-image parameters are float32 [m] vectors, which `col` turns into [m, 1, 1].

Coordinates are resolution-free: the image spans [-0.5, 0.5] in x (right) and y (down), so every
length is a fraction of the image width and a scene looks the same at 32 or 512 px; only details
thinner than a pixel fade, as they do when a real frame is downsampled. Textures are white noise
on a coarse L x L grid, smoothly interpolated to S x S (`upsample`), which makes their feature size
1/L of the image whatever S is.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

F32 = np.float32


def col(v) -> np.ndarray:
    """[m] parameters -> [m, 1, 1] so they broadcast against [m, S, S] fields; scalars pass."""
    v = np.asarray(v, dtype=F32)
    return v[:, None, None] if v.ndim else v


def rgb(colours) -> np.ndarray:
    """[m, 3] or [3] colours -> [m or 1, 3, 1, 1], to broadcast against [m, 3, S, S] images."""
    return np.asarray(colours, dtype=F32).reshape(-1, 3, 1, 1)


@functools.lru_cache(maxsize=16)
def grid(size: int):
    """Pixel-centre coordinates: x float32 [1, S] and y [S, 1], in (-0.5, 0.5); cached, read-only.

    Kept one-dimensional so that affine maps of them (shape frames, gradients, Gaussian
    factors) cost O(S) per image and only their combination is a full [m, S, S] array.
    """
    c = ((np.arange(size, dtype=np.float64) + 0.5) / size - 0.5).astype(F32)
    c.flags.writeable = False
    return c[None, :], c[:, None]


def ramp(t: np.ndarray) -> np.ndarray:
    """Smoothstep of t clipped to [0, 1]: a soft 0 -> 1 transition without kinks."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def blend(image: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha-composite `colour` ([m|1, 3, 1, 1] or an image) over `image` with alpha [m, S, S].

    In place: `image` is returned for chaining.
    """
    image += alpha[:, None] * (colour - image)
    return image


@dataclasses.dataclass
class Frame:
    """A shape's own frame, per image: centre (cx, cy) and the linear map from offsets to (u, v).

    A shape whose outline is u**2 + v**2 = 1 is an ellipse; drawing every shape in its own frame
    is what varies pose and scale per image. All fields are float32 [m].
    """

    cx: np.ndarray
    cy: np.ndarray
    ux: np.ndarray
    uy: np.ndarray
    vx: np.ndarray
    vy: np.ndarray

    @classmethod
    def ellipse(cls, cx, cy, angle, sx, sy) -> "Frame":
        """Semi-axes (sx, sy), the first turned by `angle` (radians) from the x axis."""
        c, s = np.cos(angle), np.sin(angle)
        return cls(*(np.asarray(a, F32) for a in (cx, cy, c / sx, s / sx, -s / sy, c / sy)))

    def uv(self, x, y):
        """(u, v) [m, S, S]; with the 1-D `grid` coordinates each costs one full-size addition."""
        return self.along(x, y, 1.0, 0.0), self.along(x, y, 0.0, 1.0)

    def along(self, x, y, a, b, offset=0.0) -> np.ndarray:
        """a*u + b*v - offset ([m] or scalar weights): a coordinate along any direction."""
        dx, dy = x - col(self.cx), y - col(self.cy)
        along_x = col(a * self.ux + b * self.vx) * dx - col(offset)  # [m, 1, S]: cheap
        return along_x + col(a * self.uy + b * self.vy) * dy


def local_coords(x, y, cx, cy, angle, sx, sy):
    """(u, v) [m, S, S] in the frame of an ellipse (see `Frame.ellipse`)."""
    return Frame.ellipse(cx, cy, angle, sx, sy).uv(x, y)


def compose(coeffs: np.ndarray, layers: np.ndarray) -> np.ndarray:
    """sum_j coeffs[:, :, j] * layers[:, j] -> [m, 3, S, S], as one batched matrix product.

    Any layer that is a fixed colour per image times a grey field (tone, redness, vessels) is a
    column of `coeffs` [m, 3, J]; `layers` is [m, J, S, S]. Building the image this way avoids
    one full pass per layer.
    """
    m, j = layers.shape[:2]
    return (np.asarray(coeffs, F32) @ layers.reshape(m, j, -1)).reshape(m, 3, *layers.shape[2:])


def unit_phase(u, v, r=None, eps=1e-6):
    """exp(i * polar angle) as complex64 [m, S, S]: harmonics cos(k*phi + p) without arctan2.

    `r`, if given, is sqrt(u**2 + v**2), already computed by the caller.
    """
    if r is None:
        r = np.sqrt(u * u + v * v)
    inv = 1.0 / (r + F32(eps))
    z = (u * inv).astype(np.complex64)
    z.imag = v * inv
    return z


def harmonics(z: np.ndarray, coeffs: np.ndarray, first_order: int) -> np.ndarray:
    """Real part of sum_k coeffs[:, k] * z**(first_order + k), by Horner's rule.

    With z = exp(i*phi) and coeffs = a * exp(i*p) this is sum_k a_k cos((k0 + k) phi + p_k): the
    radius perturbation that makes outlines lobulated, or folds converge on a point.
    """
    coeffs = np.asarray(coeffs, dtype=np.complex64)
    acc = np.zeros_like(z)
    for k in range(coeffs.shape[1] - 1, -1, -1):
        acc = (acc + coeffs[:, k, None, None]) * z
    for _ in range(first_order - 1):
        acc *= z
    return acc.real


def edge(signed_distance: np.ndarray, pixel: float) -> np.ndarray:
    """Anti-aliased inside mask from a signed distance (positive inside), one pixel wide."""
    return np.clip(0.5 + signed_distance / F32(pixel), 0.0, 1.0)


def line(distance: np.ndarray, width, pixel: float) -> np.ndarray:
    """Gaussian line profile of a given width ([m] or scalar, image widths) across `distance`.

    Lines thinner than a pixel are widened to one pixel and dimmed by the same factor, so their
    total ink is kept: a fine streak fades at low resolution instead of aliasing into dots.
    """
    width = np.asarray(width, dtype=F32)
    wide = np.maximum(width, F32(0.7 * pixel))
    gain = width / wide
    return col(gain) * np.exp(-np.square(distance / col(wide)))


def dome_shading(u, v, height, light, ambient=0.3):
    """Lambert and specular terms of an ellipsoidal bump of relative `height` [m] ([m, S, S] each).

    The bump's normal is (h*u, h*v, sqrt(1 - u^2 - v^2)); `light` [m, 3] is a unit vector towards
    the light. Diffuse is relative to a flat surface (1 on the mucosa around), with some ambient
    light so flanks turned away stay visible; the specular term is a Blinn lobe (shininess 32),
    the wet glint on polyps.
    """
    h = col(height)
    lx, ly, lz = (col(light[:, i]) for i in range(3))
    nz = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0))
    nx, ny = h * u, h * v
    inv_norm = 1.0 / (np.sqrt(nx * nx + ny * ny + nz * nz) + F32(1e-6))
    lambert = np.clip((nx * lx + ny * ly + nz * lz) * (inv_norm / lz), 0.0, 1e3)
    diffuse = ambient + (1.0 - ambient) * lambert
    half = light + np.array([0.0, 0.0, 1.0], dtype=F32)
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    hx, hy, hz = (col(half[:, i]) for i in range(3))
    spec = np.clip((nx * hx + ny * hy + nz * hz) * inv_norm, 0.0, 1.0)
    for _ in range(5):  # shininess 32 by squaring: a float power is ~20x slower
        spec *= spec
    return diffuse, spec


def blobs(x, y, cx, cy, rx, ry) -> np.ndarray:
    """Sum of axis-aligned Gaussian blobs [m, S, S]; centres and radii are [m, k].

    Each blob is a product of a row and a column factor, so k blobs cost one batched matrix
    product instead of k full-size evaluations.
    """
    gx = np.exp(-np.square((x[None] - cx[:, :, None, None]) / rx[:, :, None, None]))  # [m,k,1,S]
    gy = np.exp(-np.square((y[None] - cy[:, :, None, None]) / ry[:, :, None, None]))  # [m,k,S,1]
    if cx.shape[1] == 1:
        return gy[:, 0] * gx[:, 0]
    return np.matmul(gy[..., 0].transpose(0, 2, 1), gx[:, :, 0, :])


@functools.lru_cache(maxsize=64)
def _interpolation(size: int, low: int):
    """([S, L] Gaussian interpolation weights, rows summing to 1; variance gain for white noise).

    The gain is what white noise must be multiplied by to come out of `upsample` with unit
    variance (interpolating averages neighbouring samples, which lowers the variance).
    """
    pos = ((np.arange(size) + 0.5) / size) * low - 0.5
    w = np.exp(-0.5 * np.square((pos[:, None] - np.arange(low)[None, :]) / 0.75))
    w /= w.sum(axis=1, keepdims=True)
    gain = 1.0 / np.square(w).sum(axis=1).mean()
    return w.astype(F32), F32(gain)


def upsample(low: np.ndarray, size: int) -> np.ndarray:
    """Smooth interpolation [..., L, L] -> [..., S, S] (a constant stays constant)."""
    w = _interpolation(size, low.shape[-1])[0]
    return w @ low @ w.T


def noise_gain(size: int, low: int) -> np.float32:
    """Factor making white noise at L x L unit-variance once upsampled to S x S."""
    return _interpolation(size, low)[1]


def smooth_field(noise: np.ndarray, size: int) -> np.ndarray:
    """Unit-variance white noise [m, L, L] -> smooth, roughly unit-variance field [m, S, S].

    Features are about 1/L of the image wide, whatever S is: the same texture at every size.
    """
    return upsample(noise * noise_gain(size, noise.shape[-1]), size)

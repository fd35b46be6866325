"""Vectorised numpy drawing primitives for the synthetic endoscopy images.

Everything works on a batch: fields are float32 [m, S, S], colour images float32 [m, 3, S, S] in
[0, 1] (channel planes, so every per-pixel loop runs over a contiguous row; channel-last arrays
with [m, 1, 1, 3] colours run many times slower), and per-image parameters are float32 [m]
vectors that `col` turns into [m, 1, 1]. Coordinates are resolution-free: the image spans
[-0.5, 0.5] in x (right) and y (down), so every length is a fraction of the image width and a scene
looks the same at 32 or 512 px; only details thinner than a pixel fade, as they do when a real
frame is downsampled.
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


def gaussian_blur(images: np.ndarray, sigma_px: np.ndarray) -> np.ndarray:
    """Separable Gaussian blur of [m, 3, S, S], one sigma (pixels) per image.

    Small blurs (the usual case: under a pixel at 128 px) are repeated 3-tap passes
    [a, 1-2a, a] (variance 2a, a <= 1/3; in place; the outermost rows and columns are left as
    they are); larger ones are two dense [S, S] matrix products per plane, which BLAS runs faster
    than many passes.
    """
    var = np.square(np.asarray(sigma_px, F32))
    passes = max(1, int(np.ceil(var.max() * 1.5)))
    if passes > 4:
        idx = np.arange(images.shape[-1], dtype=F32)
        g = np.exp(-0.5 * np.square((idx[None, :, None] - idx[None, None, :]) / col(np.sqrt(var))))
        g = (g / g.sum(axis=2, keepdims=True))[:, None]
        return g @ images @ np.swapaxes(g, -1, -2)
    a = (var / (2 * passes))[:, None, None, None]
    for _ in range(passes):
        for axis in (2, 3):
            lo, mid, hi = (
                tuple(slice(None) if i != axis else sl for i in range(4))
                for sl in (slice(None, -2), slice(1, -1), slice(2, None))
            )
            step = images[lo] + images[hi]
            step -= 2.0 * images[mid]
            step *= a
            images[mid] += step
    return images


def field_stop(x, y, octagon, half_w, half_h, corner, cx, pixel):
    """Inside mask of the endoscope's field stop: an octagon or a circle (per image) [m, S, S].

    Octagon: |x - cx| <= half_w, |y| <= half_h, |x - cx| + |y| <= corner; circle: radius half_w.
    """
    dx, ay = np.abs(x - col(cx)), np.abs(y)
    octagon_d = np.minimum(
        np.minimum(col(half_w) - dx, col(half_h) - ay),
        (col(corner) - dx) * F32(0.7071) - ay * F32(0.7071),
    )
    circle_d = col(half_w) - np.sqrt(dx * dx + ay * ay)
    return edge(np.where(col(octagon) > 0.5, octagon_d, circle_d), pixel)


def text_mask(x, y, bits, line_chars, x0, y0, cell):
    """White on-screen-display text over the top-left corner: (mask [m, rows, cols], rows, cols).

    `bits` [m, lines, chars, 5, 3] say which cells of each glyph are lit, `line_chars` [m, lines]
    how many characters each line shows; cells are `cell` image widths, one blank column between
    characters and two blank rows between lines. The glyphs are laid out as a small bitmap per
    image, then each pixel of the corner looks up its cell.
    """
    m, n_lines, n_chars = bits.shape[:3]
    bitmap = np.zeros((m, n_lines, 7, n_chars, 4), bool)
    shown = np.arange(n_chars)[None, None, :] < line_chars[:, :, None]  # [m, lines, chars]
    bitmap[:, :, :5, :, :3] = bits.transpose(0, 1, 3, 2, 4) & shown[:, :, None, :, None]
    bitmap = bitmap.reshape(m, n_lines * 7, n_chars * 4)
    s = x.shape[1]
    rows, cols = int(np.ceil(s * 0.3)), int(np.ceil(s * 0.45))
    cx = np.floor((x[:, :cols] - col(x0)) / col(cell)).astype(np.int32)  # [m, 1, cols]
    cy = np.floor((y[:rows] - col(y0)) / col(cell)).astype(np.int32)  # [m, rows, 1]
    h, w = bitmap.shape[1:]
    inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
    flat = np.clip(cx, 0, w - 1) + (np.clip(cy, 0, h - 1) + (np.arange(m) * h)[:, None, None]) * w
    lit = np.take(bitmap.ravel(), flat.astype(np.intp)) & inside
    return lit.astype(F32), rows, cols


def picture_in_picture(x, y, size, margin, thickness, pixel):
    """The green position box in the lower left, over that corner only.

    Returns (outline, inset, loop) masks [m, rows, cols] and the corner's first row and last
    column. Olympus' ScopeGuide shows the colonoscope's 3-D shape in a green-framed dark box; the
    loop is a ring standing in for the drawn instrument.
    """
    s = x.shape[1]
    r0, cols = int(np.floor(s * 0.68)), int(np.ceil(s * 0.32))
    x, y = x[:, :cols], y[r0:]
    x0, y1 = -0.5 + col(margin), 0.5 - col(margin)
    x1, y0 = x0 + col(size), y1 - col(size)
    inside = np.minimum(np.minimum(x - x0, x1 - x), np.minimum(y - y0, y1 - y))
    inset = edge(inside - col(thickness), pixel)
    outline = edge(inside, pixel) - inset
    r = np.sqrt(np.square(x - (x0 + x1) / 2) + np.square(y - (y0 + y1) / 2))  # [m, rows, cols]
    loop = line(r - 0.27 * col(size), 0.01, pixel) * inset
    return (outline, inset, loop), r0, cols


# The field stops of a few endoscope models: (octagon?, half width, half height, corner, x shift).
FIELD_STOPS = (
    (True, 0.46, 0.50, 0.68, 0.03),
    (True, 0.44, 0.47, 0.62, 0.05),
    (True, 0.50, 0.50, 0.72, 0.00),
    (True, 0.42, 0.50, 0.64, 0.06),
    (False, 0.47, 0.0, 0.0, 0.02),
    (False, 0.50, 0.0, 0.0, 0.00),
    (False, 0.55, 0.0, 0.0, 0.00),
)


@functools.lru_cache(maxsize=8)
def field_stop_masks(size: int) -> np.ndarray:
    """[len(FIELD_STOPS) + 1, S, S] masks, the last all ones (no field stop); cached per size."""
    x, y = grid(size)
    octagon, half_w, half_h, corner, cx = (np.array(v, F32) for v in zip(*FIELD_STOPS))
    masks = field_stop(x, y, octagon, half_w, half_h, corner, cx, 1.0 / size)
    masks = np.concatenate([masks, np.ones((1, size, size), F32)])
    masks.flags.writeable = False
    return masks


@functools.lru_cache(maxsize=8)
def _grain_tile(size: int) -> np.ndarray:
    """A fixed [2S, 2S] uint8 noise tile; each image reads an S x S window at its own offset."""
    return np.random.default_rng(size).integers(0, 256, (2 * size, 2 * size), dtype=np.uint8)


def sensor_grain(size: int, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-variance sensor noise [m, S, S] read at per-image offsets fx, fy in [0, 1).

    A window into one fixed noise tile instead of fresh noise: drawing S*S numbers per image
    would cost more than the rest of the camera.
    """
    tile = _grain_tile(size)
    ox, oy = (fx * size).astype(np.int64), (fy * size).astype(np.int64)
    grain = np.stack([tile[j : j + size, i : i + size] for i, j in zip(ox, oy)]).astype(F32)
    grain -= F32(127.5)
    grain *= F32(np.sqrt(12.0) / 256)
    return grain


def camera(img, p, text_bits, lower_gi, x, y) -> np.ndarray:
    """Lighting, glints, colour, defocus, noise, field stop and overlays, in the order they occur.

    `img` [m, 3, S, S] is the scene's radiance in about 0..1; returns the video frame in 0..255
    (float32). `p` holds the per-image camera parameters drawn by `synthetic._camera_params`,
    `text_bits` the on-screen text glyphs; `lower_gi` [m] marks the frames that may show the
    colonoscope's position box.
    """
    size, c = x.shape[1], col
    pixel = 1.0 / size
    vignette_x = np.exp(-c(p.vignette) * np.square(x - c(p.light_x)))
    vignette_y = np.exp(-c(p.vignette) * np.square(y - c(p.light_y))) * c(p.brightness)
    tilt = np.hypot(p.light[:, 0], p.light[:, 1])
    gx, gy = c(p.gradient * p.light[:, 0] / tilt), c(p.gradient * p.light[:, 1] / tilt)
    shade = vignette_x * vignette_y
    shade *= 1.0 + gx * x + gy * y  # brighter towards the light
    far = p.lumen & lower_gi  # a dark, distant lumen in colon views
    if far.any():
        lumen_r = p.lumen_r[:, None]
        lumen = blobs(x, y, p.lumen_x[:, None], p.lumen_y[:, None], lumen_r, lumen_r)
        shade *= 1.0 - c(p.lumen_dark * far) * lumen
    on, gx, gy, r, elong = (np.stack(v, 1) for v in zip(*p.glints))
    gx = np.where(on, gx, F32(10.0))  # an absent glint is moved far off the image
    glint = np.clip(3.0 * blobs(x, y, gx, gy, r * elong, r / elong) - 1.0, 0.0, 1.0)
    shade *= 1.0 - glint
    img *= shade[:, None]
    for k, white in enumerate((1.0, 1.0, 0.97)):
        img[:, k] += white * glint
    # White balance, saturation and the scale to 0..255 in one 3x3 matrix per image.
    img = (p.colour_matrix @ img.reshape(len(img), 3, -1)).reshape(img.shape)
    if p.blur.any():
        img[p.blur] = gaussian_blur(img[p.blur], p.blur_sigma[p.blur] * size)
    noise = c(p.noise * 255) * sensor_grain(size, p.grain_x, p.grain_y) + F32(0.5)
    img += noise[:, None]  # the 0.5 makes the final truncating uint8 cast round
    img *= field_stop_masks(size)[p.field_stop][:, None]
    if p.text.any():
        mask, rows, cols = text_mask(x, y, text_bits, p.line_chars, p.text_x, p.text_y, p.cell)
        blend(img[:, :, :rows, :cols], rgb([242.0, 242.0, 242.0]), mask * c(p.text))
    pip = np.flatnonzero(p.pip & lower_gi)
    if len(pip):
        masks, r0, cols = picture_in_picture(
            x, y, p.pip_size[pip], p.pip_margin[pip], p.pip_line[pip], pixel
        )
        corner = img[pip, :, r0:, :cols]
        for colour, mask in zip(([8, 8, 10], [140, 158, 178], [26, 204, 64]),
                                (masks[1], masks[2], masks[0])):  # dark inset, scope, green frame
            blend(corner, rgb(colour), mask)
        img[pip, :, r0:, :cols] = corner
    return img

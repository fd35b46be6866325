"""The endoscope between the scene and the video frame: light, colour, optics, sensor, overlays.

`camera_params` draws, per image, everything outside the scene from the shared N_COMMON uniforms
(`streams`); `camera` applies it to a painted scene in the order it happens in a real system:

1. lighting: vignetting about a per-image centre, a gradient brighter towards the light, a dark
   distant lumen in some lower-GI views, and white specular glints;
2. colour: white balance and saturation about the grey axis, one 3x3 matrix per image, which also
   scales to 0..255;
3. defocus (`gaussian_blur`; `Difficulty.blur_sigma_range` is in image widths) and sensor noise
   (`sensor_grain`; `Difficulty.noise_std` is a fraction of full scale);
4. the field stop, an octagon or circle per endoscope model (`FIELD_STOPS`), blacking out the
   corners;
5. video overlays: white on-screen text in the top-left corner and, on lower-GI classes only as in
   Kvasir, the green picture-in-picture box of the colonoscope's position guide.

Images are float32 [m, 3, S, S]; lengths are fractions of the image width (see `drawing`).
How often each artefact appears and how strong it is are `Difficulty` knobs.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np

from keras_endokd.data.synthetic.difficulty import Difficulty
from keras_endokd.data.synthetic.drawing import blend, blobs, col, edge, grid, line, rgb
from keras_endokd.data.synthetic.streams import TEXT_BITS, Stream

F32 = np.float32

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


def camera_params(st: Stream, d: Difficulty) -> SimpleNamespace:
    """Everything outside the scene: light, colour rendition, optics, sensor and video overlays."""
    p = SimpleNamespace()
    tilt, azimuth = st.uniform(0.1, 0.6), st.angle()
    p.light = np.stack([tilt * np.cos(azimuth), tilt * np.sin(azimuth), np.sqrt(1 - tilt**2)], 1)
    p.vignette, p.gradient = st.uniform(0.5, 3.0), st.uniform(0.0, 0.6)
    p.light_x, p.light_y = st.jitter(0.08), st.jitter(0.08)
    p.brightness = np.exp(st.jitter(d.brightness_jitter))
    gains = np.exp(st.hue_gains(d.colour_jitter))
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
    style = np.floor(st.uniform(0, len(FIELD_STOPS) - 1e-3)).astype(np.int64)
    p.field_stop = np.where(st.flag(d.border_prob), style, len(FIELD_STOPS))  # last: none
    p.grain_x, p.grain_y = st.uniform(), st.uniform()
    p.text = st.flag(d.text_prob)
    p.text_x, p.text_y = st.uniform(-0.49, -0.47), st.uniform(-0.48, -0.45)
    p.cell, lines = st.uniform(0.007, 0.011), np.floor(st.uniform(2, 4.99))
    p.line_chars = np.stack(
        [np.floor(st.uniform(3, 12.99)) * (k < lines) for k in range(TEXT_BITS[0])], 1
    ).astype(np.int32)
    p.pip, p.pip_size = st.flag(d.pip_prob), st.uniform(0.18, 0.26)
    p.pip_margin, p.pip_line = st.uniform(0.005, 0.03), st.uniform(0.006, 0.012)
    return p


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
    (float32). `p` holds the per-image camera parameters drawn by `camera_params`,
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

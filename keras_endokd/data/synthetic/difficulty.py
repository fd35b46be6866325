"""How hard the synthetic data is: every knob in one frozen dataclass, `Difficulty`.

Two kinds of knob:

- The confusable pairs. As in the real data, two pairs overlap through a latent severity per
  image in [0, 1] (`scene.severity`; the `*subtle_fraction` of images lie in [0, 0.2]): mild
  esophagitis (few, thin, faint erosions, little redness) against a normal z-line (irregular,
  slightly red), and a flat lifted bleb against a small smooth-edged resection site. Most
  `*_range` knobs (lo, hi) are read at the image's severity, lo for the mildest, hi for the
  severest; `blur_sigma_range` and `zline_irregularity_range` are drawn uniformly within. Thin
  streaks alone do not separate esophagitis for the student trained from scratch, however wide
  or opaque (`python -m experiments.pair_probe` measures a pair), so the severer cases also carry
  what it can learn: the inflamed band (`erythema_range`) and pale fibrin coats (`fibrin_*`).
- The nuisance. Real frames vary widely in white balance, exposure, focus, noise and how much
  vessel and mucosa texture shows; learning to ignore that costs a small model more capacity than
  a wide one, and that is what leaves a teacher something to teach. Lowering these knobs
  (`noise_std`, `blur_*`, `*_jitter`, `texture_strength`) closes the gap between the student and
  its teachers; docs/results.md gives what the defaults yield.

Lengths are fractions of the image width, so a knob means the same at every image size; `*_prob`
and `*_fraction` are fractions of the images. Changing any default changes the default data, hence
the key of the shipped teachers (`python -m experiments.build_teachers` rebuilds them).
"""

from __future__ import annotations

import dataclasses
from typing import Tuple


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

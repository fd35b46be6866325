"""Where did the student look? Grad-CAM heat maps, overlays and a grid of explained test images.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017 (https://arxiv.org/abs/1610.02391). For class c with logit y_c and the
last convolutional feature map A [h, w, C]:

    alpha_k = mean over (i, j) of d y_c / d A_ijk          (one weight per channel)
    L_c     = ReLU(sum_k alpha_k A_k)                       [h, w]

upsampled bilinearly to the image and divided by its maximum (a map of zeros stays zero). The
student's last feature map is the `feat_3` tap (stride 16: 8x8 at 128x128 input), and its
output layer gives logits, the pre-softmax scores the paper differentiates.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

FEATURE_LAYER = "feat_3"


def gradcam(model, images, class_index=None, layer_name: str = FEATURE_LAYER,
            batch_size: int = 32) -> np.ndarray:
    """Grad-CAM maps in [0, 1], float32 [N, H, W], of `model` (a Keras 3 functional model whose
    output is logits) on images [N, H, W, 3] (raw pixels, as the model takes them).

    class_index: None explains each image's top-1 class; an int explains that class for every
    image; an int array [N] one class per image.
    """
    import keras
    import tensorflow as tf

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"expected images [N, H, W, C], got shape {images.shape}.")
    names = [layer.name for layer in model.layers]
    if layer_name not in names:
        raise ValueError(f"model '{model.name}' has no layer '{layer_name}' for Grad-CAM.")
    probe = keras.Model(model.input, [model.get_layer(layer_name).output, model.output])
    if class_index is not None:
        class_index = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (len(images),))
    maps = []
    for start in range(0, len(images), batch_size):
        x = tf.constant(images[start:start + batch_size])
        with tf.GradientTape() as tape:
            features, logits = probe(x, training=False)
            chosen = (tf.argmax(logits, axis=-1) if class_index is None
                      else tf.constant(class_index[start:start + batch_size]))
            score = tf.gather(logits, chosen, axis=1, batch_dims=1)
        grads = tape.gradient(score, features)  # each image's score depends on its own features
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[..., None]
        cam = tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        maps.append((cam / tf.where(peak > 0, peak, tf.ones_like(peak))).numpy())
    return np.concatenate(maps) if maps else np.zeros((0, *images.shape[1:3]), np.float32)


def overlay(image, cam, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """The image [H, W, 3] (uint8, or float in [0, 255]) with the map [H, W] in [0, 1] blended over
    it through `colormap`, weighted by the map itself so cold regions keep the image: uint8 RGB."""
    from matplotlib import colormaps

    image = np.asarray(image, dtype=np.float32)
    cam = np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0)
    if image.shape[:2] != cam.shape:
        raise ValueError(f"image {image.shape[:2]} and map {cam.shape} differ in size.")
    heat = colormaps[colormap](cam)[..., :3] * 255.0
    weight = alpha * (0.25 + 0.75 * cam)[..., None]
    return np.clip(image[..., :3] * (1 - weight) + heat * weight, 0, 255).round().astype(np.uint8)


def save_overlay(path: str, image, cam, alpha: float = 0.45) -> str:
    """`overlay(image, cam)` as a PNG at `path` (written atomically)."""
    from PIL import Image

    from keras_endokd.atomic_files import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(overlay(image, cam, alpha)).save(tmp, format="PNG")
    return path


def select_examples(labels, predictions, max_wrong: int = 12, max_correct: int = 6) -> np.ndarray:
    """Indices of the images to explain: wrong ones first, grouped by confusable pair (the most
    frequent (true, predicted) pair first), then correct ones, one class after the other.

    Within a pair and within a class the earliest image comes first, so the choice is
    deterministic.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    wrong = np.flatnonzero(labels != predictions)
    pairs = {}
    for i in wrong:
        pairs.setdefault((labels[i], predictions[i]), []).append(i)
    ranked = sorted(pairs.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    chosen_wrong = _round_robin([v for _, v in ranked], max_wrong)
    by_class = {}
    for i in np.flatnonzero(labels == predictions):
        by_class.setdefault(labels[i], []).append(i)
    chosen_right = _round_robin([by_class[c] for c in sorted(by_class)], max_correct)
    return np.asarray(chosen_wrong + chosen_right, dtype=np.int64)


def _round_robin(groups, limit: int) -> list:
    """Up to `limit` items taking one from each group in turn (so the first pairs all show)."""
    out, depth = [], 0
    while len(out) < limit and any(depth < len(g) for g in groups):
        for g in groups:
            if depth < len(g) and len(out) < limit:
                out.append(int(g[depth]))
        depth += 1
    return out


def explanation_grid(images, labels, predictions, cams, class_names: Sequence[str], path: str,
                     probabilities=None, columns: int = 4, title: str = "") -> str:
    """A PNG grid (written atomically): each image beside its Grad-CAM overlay, titled
    "true -> predicted" in red when wrong, green when right, with the top-1 probability when
    `probabilities` [N] is given; `columns` examples a row. Items are drawn in the order given
    (see `select_examples`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_endokd.atomic_files import atomic_path

    n = len(images)
    if not (len(labels) == len(predictions) == len(cams) == n):
        raise ValueError(f"{n} images, {len(labels)} labels, {len(predictions)} predictions and "
                         f"{len(cams)} maps: they must be as many.")
    columns = max(1, min(columns, n))
    rows = max(1, -(-n // columns))
    height = 1.95 * rows + 0.9
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(3.3 * columns, height), dpi=100,
                             squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.85 / height, wspace=0.04,
                        hspace=0.28)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = i // columns, 2 * (i % columns)
        true, pred = class_names[int(labels[i])], class_names[int(predictions[i])]
        ok = int(labels[i]) == int(predictions[i])
        caption = f"{_short(true)} → {_short(pred)}"
        if probabilities is not None:
            caption += f" ({float(probabilities[i]):.2f})"
        axes[r][c].imshow(np.asarray(images[i]).astype(np.uint8))
        axes[r][c + 1].imshow(overlay(images[i], cams[i]))
        # One caption centred over the pair: the left axis' right edge is the pair's middle.
        axes[r][c].set_title(caption, fontsize=7, color="#1a7f37" if ok else "#c62828",
                             loc="left", x=0.0)
    wrong = int(np.sum(np.asarray(labels) != np.asarray(predictions)))
    heading = (f"image and Grad-CAM of the predicted class: {wrong} wrong (red), "
               f"{n - wrong} right (green); true → predicted (probability)")
    fig.suptitle(f"{title}\n{heading}" if title else heading, fontsize=9)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def explain_examples(model, images, labels, class_names: Sequence[str], path: str,
                     max_wrong: int = 12, max_correct: int = 6, batch_size: int = 64,
                     layer_name: str = FEATURE_LAYER, title: str = "", logits=None) -> Optional[dict]:
    """Picks examples of `images` [N, H, W, 3] (`select_examples` on the top-1 of `logits` [N, K],
    predicted with `model` when not given), computes their Grad-CAM and writes
    `explanation_grid` to `path`.

    Returns {"path", "indices", "wrong", "correct"}, or None when there are no images.
    """
    from keras_endokd.clinical.calibration import softmax

    images = np.asarray(images)
    labels = np.asarray(labels)
    if not len(images):
        return None
    if logits is None:
        logits = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
    logits = np.asarray(logits)
    predictions = logits.argmax(axis=1)
    chosen = select_examples(labels, predictions, max_wrong, max_correct)
    cams = gradcam(model, images[chosen], predictions[chosen], layer_name=layer_name)
    explanation_grid(images[chosen], labels[chosen], predictions[chosen], cams, class_names, path,
                     probabilities=softmax(logits[chosen]).max(axis=1), title=title)
    wrong = int(np.sum(labels[chosen] != predictions[chosen]))
    return {"path": path, "indices": chosen.tolist(), "wrong": wrong, "correct": len(chosen) - wrong}

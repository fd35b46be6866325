"""Calibration, ROC/PR areas, Grad-CAM and the out-of-distribution flag, on known values."""

import glob
import os

import keras
import numpy as np
import pytest

from keras_endokd.clinical import calibration, curves, gradcam, ood
from keras_endokd.clinical.probability_metrics import (add_probability_metrics,
                                                       merge_probability_metrics,
                                                       probability_metrics)


# --- calibration -------------------------------------------------------------------------------

def test_ece_by_hand():
    # Top-1 confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.55 (right). With 15 bins,
    # 0.9 lies in (13/15, 14/15] and 0.55 and 0.6 both in (8/15, 9/15] (0.6 = 9/15: right-closed).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])
    # |acc - conf|: bin 13: |0.5 - 0.9| = 0.4; bin 8: |1.0 - 0.575| = 0.425; each holds 2 of 4.
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.425)
    bins = calibration.reliability_bins(probs, labels)
    assert bins["count"].tolist() == [0] * 8 + [2] + [0] * 4 + [2] + [0]
    # One bin: |accuracy - mean confidence| = |0.75 - 0.7375|.
    assert calibration.expected_calibration_error(probs, labels, bins=1) == pytest.approx(0.0125)


def test_ece_is_zero_when_confidence_matches_accuracy():
    probs = np.tile([[0.8, 0.2]], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)  # 80% right at confidence 0.8
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_brier_and_nll_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    labels = np.array([0, 2])
    # (0.3^2 + 0.2^2 + 0.1^2) = 0.14 and (0.5^2 + 0.5^2 + 1^2) = 1.5.
    assert calibration.brier_score(probs, labels) == pytest.approx((0.14 + 1.5) / 2)
    block = calibration.calibration_block(probs[:1], labels[:1])
    assert block["nll"] == pytest.approx(-np.log(0.7))
    assert set(block) == {"ece", "brier", "nll"}


def _overconfident_logits(n, k=5, true_t=3.0, seed=0):
    """Labels drawn from softmax(z); the model reports true_t * z, so T = true_t undoes it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, (n, k))
    p = calibration.softmax(z)
    labels = np.array([rng.choice(k, p=row) for row in p])
    return true_t * z, labels


def test_fit_temperature_recovers_a_known_temperature_and_lowers_the_nll():
    val_logits, val_labels = _overconfident_logits(20000, seed=0)
    t = calibration.fit_temperature(val_logits, val_labels)
    assert t == pytest.approx(3.0, rel=0.05)
    before = calibration.negative_log_likelihood(calibration.softmax(val_logits), val_labels)
    after = calibration.negative_log_likelihood(calibration.softmax(val_logits, t), val_labels)
    assert after < before - 0.1
    # On held-out frames the calibration error falls too, and accuracy is unchanged.
    test_logits, test_labels = _overconfident_logits(5000, seed=1)
    raw, scaled = calibration.softmax(test_logits), calibration.softmax(test_logits, t)
    assert (calibration.expected_calibration_error(scaled, test_labels)
            < 0.5 * calibration.expected_calibration_error(raw, test_labels))
    assert np.array_equal(raw.argmax(1), scaled.argmax(1))


def test_too_few_validation_frames_fit_no_temperature():
    val_logits, val_labels = _overconfident_logits(calibration.MIN_FIT_IMAGES - 1, seed=0)
    assert calibration.fit_temperature(val_logits, val_labels) == 1.0
    more_logits, more_labels = _overconfident_logits(calibration.MIN_FIT_IMAGES, seed=0)
    assert calibration.fit_temperature(more_logits, more_labels) > 1.5


def test_fit_temperature_of_a_calibrated_model_is_near_one():
    logits, labels = _overconfident_logits(20000, true_t=1.0, seed=2)
    assert calibration.fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.05)


def test_fold_temperature_divides_the_logits_without_a_new_layer():
    from keras_endokd.models.student import build_student

    student = build_student(num_classes=4, image_size=32)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    reference = np.asarray(student(x, training=False))
    folded = calibration.fold_temperature(student, 2.5)
    assert len(folded.layers) == len(student.layers)
    np.testing.assert_allclose(np.asarray(folded(x, training=False)), reference / 2.5, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(student(x, training=False)), reference)  # original unchanged
    with pytest.raises(ValueError, match="no layer 'head'"):
        calibration.fold_temperature(student, 2.0, layer_name="head")
    with pytest.raises(ValueError, match="> 0"):
        calibration.fold_temperature(student, 0.0)


def test_reliability_diagram_writes_a_png(tmp_path):
    probs = calibration.softmax(np.random.default_rng(0).normal(0, 2, (200, 4)))
    labels = np.random.default_rng(1).integers(0, 4, 200)
    path = calibration.reliability_diagram(probs, labels, str(tmp_path / "r.png"), title="t",
                                           temperature=1.3)
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["r.png"]  # written atomically: no temporary file left


# --- curves ------------------------------------------------------------------------------------

def _curve_example():
    # Class 0's scores: positives 0.9 and 0.4, negatives 0.6, 0.2, 0.3. Class 3 has no image.
    probs = np.array([[0.9, 0.05, 0.05, 0.0], [0.4, 0.5, 0.1, 0.0], [0.6, 0.3, 0.1, 0.0],
                      [0.2, 0.1, 0.7, 0.0], [0.3, 0.6, 0.1, 0.0]])
    labels = np.array([0, 0, 1, 2, 1])
    return probs, labels, ["a", "b", "c", "absent"]


def test_roc_and_pr_auc_by_hand():
    probs, labels, names = _curve_example()
    per_class = curves.per_class_auc(probs, labels, names)
    # ROC-AUC: of the 2 x 3 (positive, negative) pairs, 0.9 beats all 3 and 0.4 beats 0.2 and 0.3.
    assert per_class["a"]["roc_auc"] == pytest.approx(5 / 6)
    # AP: ranked 0.9 (P), 0.6, 0.4 (P): precision 1 at recall 1/2, 2/3 at recall 1.
    assert per_class["a"]["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # Class c: its one positive (0.7) beats every negative.
    assert per_class["c"]["roc_auc"] == pytest.approx(1.0)
    assert per_class["absent"] == {"roc_auc": None, "pr_auc": None, "auc_note": curves.NO_POSITIVE}


def test_macro_roc_auc_leaves_classes_without_a_curve_out():
    probs, labels, names = _curve_example()
    block = curves.curves_block(probs, labels, names)
    per = block["per_class"]
    expected = np.mean([per[c]["roc_auc"] for c in ("a", "b", "c")])
    assert block["macro_roc_auc"] == pytest.approx(expected)
    assert block["auc_excluded"] == ["absent"]


def test_probability_metrics_keys_and_merge():
    probs, labels, names = _curve_example()
    block = probability_metrics(probs, labels, names)
    assert {"ece", "brier", "nll", "macro_roc_auc", "macro_pr_auc", "per_class"} <= set(block)
    scores = {"accuracy": 0.6, "per_class": {n: {"precision": 1.0} for n in names}}
    add_probability_metrics(scores, probs, labels, names)
    assert scores["per_class"]["a"] == {"precision": 1.0, "roc_auc": pytest.approx(5 / 6),
                                        "pr_auc": pytest.approx(5 / 6)}
    assert scores["ece"] == block["ece"] and scores["accuracy"] == 0.6
    other = {"per_class": {"a": {"f1": 0.5}}}
    merge_probability_metrics(other, block)
    assert other["per_class"]["a"]["f1"] == 0.5 and other["macro_roc_auc"] == block["macro_roc_auc"]
    assert "per_class" in block  # the block itself is left as it was


def test_curves_png_for_23_classes(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"class-{i:02d}-with-a-long-name" for i in range(23)]
    labels = rng.integers(0, 22, 400)  # the last class has no image
    probs = calibration.softmax(rng.normal(0, 1, (400, 23)) + 3 * np.eye(23)[labels])
    path = curves.plot_roc_pr_curves(probs, labels, names, str(tmp_path / "c.png"))
    from PIL import Image

    width, height = Image.open(path).size
    assert width >= 1300 and height >= 900  # 6 panels a row, 4 rows: each panel stays readable


# --- Grad-CAM ----------------------------------------------------------------------------------

PATCH = (slice(16, 24), slice(8, 16))  # rows, columns of the planted patch in a 32x32 image


def _patch_images(n, rng, with_patch):
    images = rng.uniform(90, 160, (n, 32, 32, 3)).astype(np.float32)
    if with_patch is not None:
        for i in range(n):
            if with_patch[i]:
                images[i, PATCH[0], PATCH[1]] = (250, 20, 20)
    return images


def _constructed_model():
    """A red-patch detector: feat_3 channel 0 = ReLU(R - (G + B) / 2), channel 1 = G, pooled to
    8x8; class 1's logit reads channel 0, class 0's channel 1."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(2, 1, use_bias=False, activation="relu", name="detect")(inputs)
    x = keras.layers.AveragePooling2D(4)(x)
    x = keras.layers.Identity(name="feat_3")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(2, name="logits")(x)
    model = keras.Model(inputs, logits)
    model.get_layer("detect").set_weights([np.array([[[[1.0, 0.0], [-0.5, 1.0], [-0.5, 0.0]]]])])
    model.get_layer("logits").set_weights([np.array([[0.0, 5.0], [1.0, 0.0]]), np.zeros(2)])
    return model


def _patch_share(cam):
    inside = cam[:, PATCH[0], PATCH[1]].mean()
    mask = np.ones(cam.shape[1:], bool)
    mask[PATCH] = False
    return inside, cam[:, mask].mean()


def test_gradcam_peaks_on_the_planted_patch_of_a_constructed_model():
    rng = np.random.default_rng(0)
    images = _patch_images(4, rng, [True] * 4)
    model = _constructed_model()
    cam = gradcam.gradcam(model, images, class_index=1)
    assert cam.shape == (4, 32, 32) and cam.max() == pytest.approx(1.0)
    peaks = [np.unravel_index(c.argmax(), c.shape) for c in cam]
    assert all(PATCH[0].start <= r < PATCH[0].stop and PATCH[1].start <= c < PATCH[1].stop
               for r, c in peaks)
    inside, outside = _patch_share(cam)
    assert inside > 5 * outside
    # The other class reads the green channel, which the red patch lacks: its map avoids the patch.
    inside0, outside0 = _patch_share(gradcam.gradcam(model, images, class_index=0))
    assert inside0 < outside0


def test_gradcam_peaks_on_the_patch_a_trained_model_learned():
    rng = np.random.default_rng(0)
    has_patch = np.arange(256) % 2 == 1
    images = rng.uniform(60, 190, (256, 32, 32, 3)).astype(np.float32)
    for i in np.flatnonzero(has_patch):  # a red patch at a random place decides the class
        r, c = rng.integers(0, 24, 2)
        images[i, r:r + 8, c:c + 8] = (250, 20, 20)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="feat_3")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(x))
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(images, has_patch.astype(np.int32), epochs=8, batch_size=32, verbose=0)
    probe = _patch_images(8, np.random.default_rng(1), [True] * 8)
    assert np.all(np.asarray(model(probe)).argmax(1) == 1)
    cam = gradcam.gradcam(model, probe)  # the predicted class, 1
    inside, outside = _patch_share(cam)
    assert inside > 2 * outside
    peaks = [np.unravel_index(c.argmax(), c.shape) for c in cam]
    near = [PATCH[0].start - 2 <= r < PATCH[0].stop + 2 and PATCH[1].start - 2 <= c < PATCH[1].stop + 2
            for r, c in peaks]
    assert sum(near) >= 7


def test_overlay_and_files(tmp_path):
    image = np.full((32, 32, 3), 100, np.uint8)
    cam = np.zeros((32, 32))
    cam[PATCH] = 1.0
    out = gradcam.overlay(image, cam)
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    assert np.abs(out[20, 10].astype(int) - 100).sum() > np.abs(out[0, 0].astype(int) - 100).sum()
    with pytest.raises(ValueError, match="differ in size"):
        gradcam.overlay(image, cam[:16])
    assert open(gradcam.save_overlay(str(tmp_path / "o.png"), image, cam), "rb").read(4) == b"\x89PNG"


def test_select_examples_puts_the_most_confused_pair_first():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 1])
    predictions = np.array([1, 0, 0, 2, 2, 2, 2, 0, 1])
    # Wrong: (0->1) at 0; (1->2) at 3, 4; (2->0) at 7. Right: class 0 at 1, 2; 1 at 8; 2 at 5, 6.
    chosen = gradcam.select_examples(labels, predictions, max_wrong=3, max_correct=4)
    assert chosen.tolist() == [3, 0, 7, 1, 8, 5, 2]


def test_explanation_grid_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, 32, 32, 3)).astype(np.uint8)
    cams = rng.uniform(0, 1, (5, 32, 32))
    path = gradcam.explanation_grid(images, [0, 1, 0, 1, 1], [1, 1, 0, 0, 1], cams, ["x", "y"],
                                    str(tmp_path / "g.png"), probabilities=[0.6, 0.9, 0.8, 0.5, 0.7])
    assert open(path, "rb").read(4) == b"\x89PNG"
    with pytest.raises(ValueError, match="as many"):
        gradcam.explanation_grid(images, [0], [1], cams, ["x", "y"], str(tmp_path / "h.png"))


# --- out-of-distribution -----------------------------------------------------------------------

def test_scores_threshold_and_flag_by_hand():
    logits = np.array([[2.0, 0.0], [0.0, 0.0]])
    assert ood.max_softmax_probability(logits=logits) == pytest.approx([1 / (1 + np.exp(-2)), 0.5])
    assert ood.energy_score(logits) == pytest.approx([np.log(np.exp(2) + 1), np.log(2)])
    assert ood.energy_score(logits, temperature=2.0) == pytest.approx(
        [2 * np.log(np.exp(1) + 1), 2 * np.log(2)])
    scores = np.arange(100, dtype=float)
    threshold = ood.calibrate_threshold(scores, 0.05)
    assert np.mean(ood.flag(scores, threshold)) == pytest.approx(0.04)  # 0..3 lie below 4
    assert ood.flag(0.3, 0.5) is True and ood.flag(0.7, 0.5) is False
    with pytest.raises(ValueError, match="needs logits"):
        ood.ood_score("energy", probabilities=np.array([[0.5, 0.5]]))


@pytest.fixture(scope="module")
def trained():
    """The shipped 2x teacher (trained on the embedded data) and that data's validation split."""
    from keras_endokd.data import synthetic
    from keras_endokd.distill.teacher_store import SHIPPED_DIR

    path = sorted(glob.glob(os.path.join(SHIPPED_DIR, "mobile_x2-*.keras")))
    if not path:
        pytest.skip("the shipped mobile_x2 teacher is not installed")
    model = keras.saving.load_model(path[0], safe_mode=True)
    source = synthetic.load(image_size=int(model.input_shape[1]), seed=0,
                            split_sizes={"val": 24, "test": 8})
    return model, source


@pytest.mark.xdist_group("clinical_trained")
@pytest.mark.parametrize("method", [
    # Measured: the 48-epoch mobile_x2 gives constant frames a median top-1 probability of 0.84,
    # above the 5% validation quantile, so MSP flags none of them (the 24-epoch one: 69%); energy
    # still flags 88%. `predict` catches constant frames with its degenerate-frame check.
    pytest.param("msp", marks=pytest.mark.xfail(strict=True, reason="MSP misses constant frames on "
                                                "this confident teacher (0 of 16 flagged)")),
    "energy"])
def test_ood_flag_fires_on_constant_images(trained, method):
    from keras_endokd.clinical.run_outputs import predict_logits

    model, source = trained
    size = int(model.input_shape[1])
    val = source.splits["val"]
    val_scores = ood.ood_score(method, logits=predict_logits(model, val.images))
    threshold = ood.calibrate_threshold(val_scores)
    test_scores = ood.ood_score(method, logits=predict_logits(model, source.splits["test"].images))
    grey = np.stack([np.full((size, size, 3), v, np.uint8) for v in range(0, 256, 17)])
    grey_scores = ood.ood_score(method, logits=predict_logits(model, grey))
    in_distribution = np.mean(ood.flag(test_scores, threshold))
    constant = np.mean(ood.flag(grey_scores, threshold))
    assert in_distribution <= 0.15
    assert constant >= 0.6 and constant >= in_distribution + 0.5
    card = ood.ood_card(method, threshold, 0.05, val_scores)
    assert card["threshold"] == threshold and card["validation_flagged"] <= 0.05


@pytest.mark.xdist_group("clinical_trained")
def test_clinical_outputs_of_a_trained_model(trained, tmp_path):
    from keras_endokd.clinical.run_outputs import clinical_outputs

    model, source = trained
    val, test = source.splits["val"], source.splits["test"]
    out = clinical_outputs(model, (val.images, val.labels), (test.images, test.labels),
                           source.class_names, str(tmp_path))
    assert sorted(out["files"]) == sorted(os.listdir(tmp_path))
    assert {"reliability_diagram.png", "roc_pr_curves.png", "explanations.png"} <= set(out["files"])
    s = out["student"]
    assert 0.0 <= s["ece"] <= 1.0 and 0.8 < s["macro_roc_auc"] <= 1.0
    assert set(s["per_class"]) == set(source.class_names)
    cal = out["calibration"]
    assert cal["val_nll_after"] <= cal["val_nll_before"] + 1e-9
    assert out["ood"]["temperature"] == cal["temperature"] and out["ood"]["method"] == "msp"

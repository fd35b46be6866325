"""Deployment: tf_keras twin, pruning, int8 conversion, metadata, C array, failed exports, and
the predict and evaluate commands (the export command: test_export_cli.py).

A tiny colour-coded dataset (4 classes, 48x48) and a student trained on it for a few epochs stand
in for a real run; the end-to-end export runs once per module and the tests read its files.
"""

import json
import os
import re
import shutil

import keras
import numpy as np
import pytest
from PIL import Image

from keras_endokd.data.source import DatasetSource, Split
from keras_endokd.deploy import metadata, micro, twin
from keras_endokd.deploy.litert import TFLiteModel, tensor_types
from keras_endokd.deploy.prune import fine_tune_steps, kernel_sparsity, recalibrate_batchnorm
from keras_endokd.models.student import build_student

pytestmark = pytest.mark.xdist_group("test_export")  # its module fixtures are built once, on one worker

SIZE = 48
CLASSES = ("blue", "green", "red", "yellow")  # sorted, as an image folder's classes are
COLOURS = np.array([[40, 60, 210], [40, 200, 50], [210, 40, 40], [210, 200, 40]], np.float32)
EXPECTED_FILES = {
    "student_pruned.keras", "student_float32.tflite", "student_int8.tflite",
    "student_android.tflite", "labels.txt", "model_data.cc", "model_data.h",
    "micro_op_resolver.h", "model_card.json", "export_report.json", "reliability_diagram_float32.png",
    "reliability_diagram_int8.png", "reliability_diagram_android.png",
}


def _split(n, seed, size=SIZE):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    images = COLOURS[labels][:, None, None, :] + rng.normal(0, 35, (n, size, size, 3))
    return Split(labels, images=np.clip(images, 0, 255).astype(np.uint8))


def _frame(colour, width, height, border=0, seed=0):
    """An RGB frame of one class colour; `border` pixels of black around it (endoscope surround)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float32)
    image[border:height - border, border:width - border] = colour + rng.normal(
        0, 25, (height - 2 * border, width - 2 * border, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def _bn_momentum(model, momentum):
    # A few dozen steps leave BatchNorm's moving statistics (momentum 0.99) far from the data's:
    # the student would predict one class at inference. Real runs train for hundreds of steps.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


@pytest.fixture(scope="module")
def source():
    return toy_source()


def trained_student(source):
    """The toy student, trained on `source`'s training split (checked to have learned)."""
    keras.utils.set_random_seed(0)
    model = build_student(len(CLASSES), SIZE)
    _bn_momentum(model, 0.8)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train = source.splits["train"]
    model.fit(train.images.astype(np.float32), train.labels, batch_size=32, epochs=4, verbose=0)
    _bn_momentum(model, 0.99)
    test = source.splits["test"]
    accuracy = np.mean(np.argmax(model.predict(test.images.astype(np.float32), verbose=0), -1)
                       == test.labels)
    assert accuracy > 0.6, f"the toy student did not learn (test accuracy {accuracy:.2f})"
    return model


def toy_source():
    return DatasetSource("toy_colours", CLASSES, {
        "train": _split(192, 1), "val": _split(32, 2), "test": _split(64, 3)})


@pytest.fixture(scope="module")
def student(source):
    return trained_student(source)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, student, source):
    from keras_endokd.deploy.deployment import export_student

    run_dir = str(tmp_path_factory.mktemp("run"))
    keras.utils.set_random_seed(0)
    teacher = keras.models.clone_model(student)  # a stand-in teacher: exercises the KD loss
    teacher.set_weights(student.get_weights())
    report = export_student(run_dir, student, source, [teacher], image_size=SIZE, sparsity=0.5,
                            fine_tune_epochs=1, batch_size=32, min_agreement=0.9,
                            command="pytest")
    return run_dir, report


def _read(run_dir, name):
    with open(os.path.join(run_dir, name), "rb") as f:
        return f.read()


# ------------------------------------------------------------------------------------ twin
def _randomized_batchnorm(model):
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([g * rng.uniform(0.5, 2, g.shape), b + rng.normal(0, 0.2, b.shape),
                               m + rng.normal(0, 0.2, m.shape), v * rng.uniform(0.5, 2, v.shape)])


def test_twin_is_exact_both_ways():
    model = build_student(5, 32)
    _randomized_batchnorm(model)
    tfk = twin.to_tf_keras(model)
    assert [l.name for l in tfk.layers] == [l.name for l in model.layers]
    assert twin.max_output_difference(model, tfk) < 1e-5
    back = twin.to_keras(tfk, model)
    for a, b in zip(model.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert twin.max_output_difference(model, back) < 1e-5


def test_twin_rejects_unknown_layers():
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.MaxPooling2D()(inputs)))
    with pytest.raises(ValueError, match="MaxPooling2D"):
        twin.to_tf_keras(keras.Model(inputs, outputs))


def test_copy_weights_names_missing_layer():
    a, b = build_student(4, 32), build_student(3, 32)
    with pytest.raises(ValueError, match="logits"):
        twin.copy_weights(a, b)  # Dense 104->4 does not fit 104->3


@pytest.mark.parametrize("images,batch,epochs", [(192, 32, 1), (10, 64, 1), (1000, 64, 3)])
def test_pruning_schedule_reaches_target_before_the_end(images, batch, epochs):
    steps, end_step, frequency = fine_tune_steps(images, batch, epochs)
    assert end_step % frequency == 0  # the last mask update lands on end_step
    assert 1 <= end_step < steps * epochs


# ----------------------------------------------------------------------------- end to end
def test_batchnorm_recalibration_gives_each_layer_its_inputs_exact_statistics():
    """Each BatchNormalization's moving statistics become its input's mean and (biased) variance
    over the images, in inference mode, with every earlier BatchNorm already recalibrated: the
    second layer's input depends on the first's new statistics, so a wrong order fails."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:  # stale statistics, far from the data's
        gamma, beta, _, _ = layer.get_weights()
        layer.set_weights([gamma, beta, np.full(4, 5.0, np.float32), np.full(4, 0.01, np.float32)])
    images = np.random.default_rng(0).uniform(0, 255, (50, 12, 12, 3)).astype(np.uint8)
    recalibrate_batchnorm(model, images, batch_size=16)  # 50 images: the last batch is partial
    for layer in bns:
        x = np.asarray(keras.Model(model.inputs[0], layer.input)(images.astype(np.float32)), np.float64)
        x = x.reshape(-1, 4)
        _, _, mean, variance = layer.get_weights()
        np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(variance, x.var(0), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_export_writes_every_file_and_no_temporaries(exported):
    run_dir, report = exported
    files = set(os.listdir(run_dir))
    assert EXPECTED_FILES <= files
    leftovers = [f for f in files if f.startswith(".") or f.endswith(".tmp")]
    assert not leftovers
    assert report["status"] == "ok" and set(report["files"]) == EXPECTED_FILES
    card = json.loads(_read(run_dir, "model_card.json"))
    assert card["input"]["format"] == f"RGB uint8 [1,{SIZE},{SIZE},3]"
    assert card["classes"] == list(CLASSES)
    assert card["trainable_params"] == 51_220  # 51,640 at 8 classes; 4 classes here
    assert card["command"] == "pytest"
    assert card["dataset"]["splits"]["train"]["total"] == 192
    for name in ("student_int8.tflite", "student_android.tflite", "student_float32.tflite"):
        assert card["files"][name]["bytes"] == len(_read(run_dir, name))
        assert 0 < card["files"][name]["gzip_bytes"] < card["files"][name]["bytes"]
    assert _read(run_dir, "labels.txt").decode().splitlines() == list(CLASSES)


@pytest.mark.slow
def test_the_exports_are_calibrated_and_scored_like_the_student(exported):
    """The validation-fitted temperature is folded into the logits layer: the float32 model's
    probabilities are softmax(z / T) of the pruned Keras model's logits, and every model carries
    the metrics.json block (ECE, Brier, ROC/PR-AUC per class) and an OOD threshold in the card."""
    run_dir, report = exported
    t = report["calibration"]["temperature"]
    assert report["calibration"]["val_nll_after"] <= report["calibration"]["val_nll_before"] + 1e-9
    pruned = keras.saving.load_model(os.path.join(run_dir, "student_pruned.keras"), safe_mode=True)
    images = _split(16, 7).images.astype(np.float32)
    logits = keras.ops.convert_to_numpy(pruned(images, training=False))
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(logits / t, axis=-1))
    got = TFLiteModel(os.path.join(run_dir, "student_float32.tflite")).predict(images)
    np.testing.assert_allclose(got, expected, atol=2e-3)
    card = json.loads(_read(run_dir, "model_card.json"))
    assert card["calibration"]["temperature"] == t
    for key, name in (("float32", "student_float32.tflite"), ("int8", "student_int8.tflite"),
                      ("android", "student_android.tflite")):
        entry = report["checks"][key]
        assert 0 <= entry["ece"] <= 1 and 0 <= entry["brier"] <= 2 and 0.5 < entry["macro_roc_auc"] <= 1
        assert set(entry["per_class"][CLASSES[0]]) == {"roc_auc", "pr_auc"}
        assert 0 < card["ood"][name]["threshold"] <= 1 and card["ood"][name]["method"] == "msp"
    assert report["checks"]["keras_student"]["ece"] >= 0
    assert set(report["latency"]) == {f"{k}_ms_{n}" for k in ("float32", "int8", "android")
                                      for n in ("1_thread", "2_threads")}
    assert all(0 < ms < 1000 for ms in report["latency"].values())


@pytest.mark.slow
def test_pruning_reaches_target_sparsity(exported):
    run_dir, report = exported
    sparsity = report["prune"]["sparsity"]
    assert abs(sparsity["pruned_layers"] - 0.5) < 0.01
    for name, layer in sparsity["layers"].items():
        if layer["pruned"]:
            assert abs(layer["sparsity"] - 0.5) < 0.01, name
        else:
            assert name in ("stem_conv", "block1_dw") and layer["zeros"] == 0
    pruned = keras.saving.load_model(os.path.join(run_dir, "student_pruned.keras"), safe_mode=True)
    assert kernel_sparsity(pruned, skip=("stem_conv", "block1_dw"))["pruned_layers"] == \
        sparsity["pruned_layers"]


@pytest.mark.slow
def test_integer_models_agree_with_the_keras_student(exported):
    _, report = exported
    checks = report["checks"]
    assert checks["float32"]["agreement"] >= 0.99
    assert checks["int8"]["agreement"] >= 0.95
    assert checks["android"]["agreement"] >= 0.95
    assert checks["int8"]["accuracy"] > 0.6


@pytest.mark.slow
def test_agreement_is_measured_on_every_split_with_its_interval(exported):
    _, report = exported
    check = report["agreement_check"]
    # all 288 images (fewer than the 1,024 cap), not the 64 of the test split
    assert check["images"] == 288 and check["images_from"] == {"train": 192, "val": 32, "test": 64}
    assert "upper bound" in check["rule"] and check["min_agreement"] == 0.9
    for key in ("float32", "int8", "android"):
        entry = report["checks"][key]
        assert entry["agreement_images"] == 288 and entry["num_images"] == 64  # scores: test only
        lower, upper = entry["agreement_interval_95"]
        assert lower <= entry["agreement"] <= upper
        assert entry["disagreements"] == round(288 * (1 - entry["agreement"]))


@pytest.mark.slow
def test_int8_model_is_a_microcontroller_model(exported):
    run_dir, report = exported
    int8 = _read(run_dir, "student_int8.tflite")
    assert micro.unsupported_micro_ops(int8) == []
    assert tensor_types(int8) == {"inputs": ["int8"], "outputs": ["int8"]}
    scale, zero_point = TFLiteModel(int8).input_details["quantization"]
    assert abs(scale - 1.0) < 1e-3 and zero_point == -128  # q = pixel - 128
    assert micro.parse_c_array(_read(run_dir, "model_data.cc").decode()) == int8
    header = _read(run_dir, "micro_op_resolver.h").decode()
    assert "AddConv2D();" in header and "AddDepthwiseConv2D();" in header
    assert report["micro"]["model_bytes"] == len(int8)
    # per-channel scales (~83 KB) do not fit the default 64,000-byte budget: mixed scales do
    scales = report["conversion"]["int8_weight_scales"]
    assert scales["per_channel_bytes"] > 64000 >= len(int8) == scales["bytes"]
    assert report["micro"]["model_target_met"] and scales["per_channel_layers"]


def _weight_scales(model_bytes) -> list:
    """Scales per quantized constant tensor (weights and biases) of a .tflite model."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    return [len(t.quantization.scale) for t in model.subgraphs[0].tensors
            if model.buffers[t.buffer].data is not None and t.quantization is not None
            and t.quantization.scale is not None]


@pytest.fixture(scope="module")
def two_conversions(student, source):
    """The toy student's int8 model with per-channel and with per-tensor weight scales."""
    from keras_endokd.deploy.convert import probability_model, to_tflite

    model = probability_model(student)
    images = source.splits["train"].images[:100].astype(np.float32)
    named = to_tflite(model, images, "int8", "int8")
    per_tensor = to_tflite(model, images, "int8", "int8", per_channel=False)
    return model, named, per_tensor


def test_per_tensor_int8_model_is_smaller_and_agrees(two_conversions, source):
    from keras_endokd.deploy.export_checks import agreement

    model, per_channel, per_tensor = two_conversions
    test = source.splits["test"].images.astype(np.float32)
    assert max(_weight_scales(per_channel)) > 1 and set(_weight_scales(per_tensor)) == {1}
    # ~1,970 per-channel scales (float32) and zero points (int64) are gone
    assert len(per_channel) - len(per_tensor) > 12 * 1000
    reference = np.argmax(model.predict(test, verbose=0), -1)
    assert agreement(TFLiteModel(per_tensor).predict(test), reference) >= 0.95


def test_splicing_per_channel_layers_into_the_per_tensor_model(two_conversions, source):
    from keras_endokd.deploy.granularity import splice, weighted_layers

    _, per_channel, per_tensor = two_conversions
    layers = weighted_layers(per_channel)
    assert [l["channels"] for l in layers] == [16, 16, 32, 32, 64, 64, 64, 64, 128, 128, 128,
                                               128, 104, 4]
    test = source.splits["test"].images.astype(np.float32)
    every = splice(per_tensor, per_channel, [l["op"] for l in layers])
    none = splice(per_tensor, per_channel, [])
    np.testing.assert_array_equal(TFLiteModel(every).predict(test), TFLiteModel(per_channel).predict(test))
    np.testing.assert_array_equal(TFLiteModel(none).predict(test), TFLiteModel(per_tensor).predict(test))
    # one depthwise layer of 32 channels: its filter and bias gain 31 scales and zero points each
    block2_dw = next(l for l in layers if l["channels"] == 32 and l["type"] == "DEPTHWISE_CONV_2D")
    one = splice(per_tensor, per_channel, [block2_dw["op"]])
    scales = sorted(_weight_scales(one))
    assert len(scales) == len(_weight_scales(none)) and scales[-2:] == [32, 32] and scales[-3] == 1
    assert 2 * 31 * 12 <= len(one) - len(none) <= 2 * 31 * 12 + 64  # + flatbuffer alignment


def test_mixed_scales_stay_within_the_budget_and_lower_the_error(two_conversions, source):
    from keras_endokd.deploy.granularity import choose_per_channel_layers

    model, named, per_tensor = two_conversions
    images = source.splits["train"].images[:100].astype(np.float32)
    reference = np.asarray(model(images))

    def error(candidate):
        return float(np.mean(np.sum((TFLiteModel(candidate).predict(images) - reference) ** 2, -1)))

    budget = len(per_tensor) + 3000
    mixed, report = choose_per_channel_layers(per_tensor, named, budget, error, names_from=named)
    assert len(mixed) == report["bytes"] <= budget
    assert report["per_channel_layers"], "no layer gained from per-channel scales"
    assert set(report["per_channel_layers"]) | set(report["per_tensor_layers"]) == {
        "stem_conv", "logits", *(f"block{i}_{k}" for i in range(1, 7) for k in ("dw", "pw"))}
    assert report["error"] < report["error_per_tensor"] == pytest.approx(error(per_tensor))
    assert report["error"] == pytest.approx(error(mixed))
    # the budget below the per-tensor model itself: nothing fits, the per-tensor model is kept
    smallest, report = choose_per_channel_layers(per_tensor, named, 1000, error)
    assert report["per_channel_layers"] == [] and error(smallest) == report["error_per_tensor"]


def test_splicing_refuses_conversions_calibrated_differently(two_conversions, source):
    """Layers are interchangeable only when both conversions share every activation range."""
    from keras_endokd.deploy.convert import to_tflite
    from keras_endokd.deploy.granularity import splice

    model, per_channel, _ = two_conversions
    darker = source.splits["train"].images[:100].astype(np.float32) * 0.3
    darker[0, 0, 0], darker[0, -1, -1] = 0.0, 255.0  # the same input range, other activations
    with pytest.raises(ValueError, match="different activation scales"):
        splice(to_tflite(model, darker, "int8", "int8", per_channel=False), per_channel, [2])


@pytest.mark.slow
def test_mixed_scale_int8_model_gives_the_same_scores_in_tflite_micro(exported, source):
    """The microcontroller runtime reads the per-channel and the per-tensor layers of the spliced
    model exactly as LiteRT's built-in kernels do: identical int8 scores.

    Against LiteRT's default XNNPACK delegate the scores differ by up to ~6 steps of 1/256 on
    some images, for the converter's own per-channel and per-tensor models as much as for the
    spliced one (measured on 64 images): XNNPACK requantizes differently, so it is not the
    reference here."""
    from tflite_micro.python.tflite_micro import runtime  # a dependency: fail, never skip
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    run_dir, report = exported
    int8 = _read(run_dir, "student_int8.tflite")
    assert report["conversion"]["int8_weight_scales"]["per_channel_layers"]  # really mixed
    assert report["conversion"]["int8_weight_scales"]["per_tensor_layers"]
    builtin = Interpreter(model_content=int8,
                          experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    builtin.allocate_tensors()
    micro_interpreter = runtime.Interpreter.from_bytes(int8, arena_size=1 << 20)
    for image in source.splits["test"].images[:32]:
        q = (image.astype(np.int16) - 128).astype(np.int8)[None]
        micro_interpreter.set_input(q, 0)
        micro_interpreter.invoke()
        builtin.set_tensor(builtin.get_input_details()[0]["index"], q)
        builtin.invoke()
        np.testing.assert_array_equal(micro_interpreter.get_output(0),
                                      builtin.get_tensor(builtin.get_output_details()[0]["index"]))


@pytest.mark.slow
def test_android_model_metadata_reads_back(exported):
    run_dir, _ = exported
    android = _read(run_dir, "student_android.tflite")
    meta = metadata.read_metadata(android)
    assert meta["inputs"][0]["normalization"] == {"mean": [0.0], "std": [1.0]}
    assert meta["inputs"][0]["color_space"] == "RGB"
    labels_file = meta["outputs"][0]["associated_files"][0]
    assert labels_file["type"] == "TENSOR_AXIS_LABELS"
    files = metadata.read_associated_files(android)
    assert files[labels_file["name"]].decode().splitlines() == list(CLASSES)
    assert tensor_types(android) == {"inputs": ["uint8"], "outputs": ["float32"]}
    scale, zero_point = TFLiteModel(android).input_details["quantization"]
    assert abs(scale - 1.0) < 1e-3 and zero_point == 0  # camera bytes go in as they are


# -------------------------------------------------------------------------------- the CLIs
@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Image files of several sizes and formats, one a 720x576 frame with a black border."""
    folder = tmp_path_factory.mktemp("frames")
    specs = [("blue.png", 0, 100, 80, 0, "PNG"), ("green.jpg", 1, 64, 64, 0, "JPEG"),
             ("red_frame.jpg", 2, 720, 576, 60, "JPEG"), ("yellow.png", 3, 33, 47, 0, "PNG")]
    paths = []
    for name, label, width, height, border, fmt in specs:
        path = str(folder / name)
        _frame(COLOURS[label], width, height, border, seed=label).save(path, fmt)
        paths.append(path)
    return paths


def _predict(capsys, model, images, *flags):
    from keras_endokd import predict

    code = predict.main(["predict", f"--model={model}", *flags, *images])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


@pytest.mark.slow
def test_predict_keras_and_tflite_agree(exported, frames, capsys):
    run_dir, _ = exported
    results = {}
    for name in ("student_pruned.keras", "student_int8.tflite", "student_android.tflite"):
        code, lines, err = _predict(capsys, os.path.join(run_dir, name), frames)
        assert code == 0, err
        assert [line["image"] for line in lines] == frames
        for line in lines:
            assert len(line["top3"]) == 3 and {t["class"] for t in line["top3"]} <= set(CLASSES)
            probabilities = [t["probability"] for t in line["top3"]]
            assert probabilities == sorted(probabilities, reverse=True)
        results[name] = [line["top3"][0]["class"] for line in lines]
    assert results["student_int8.tflite"] == results["student_pruned.keras"]
    assert results["student_android.tflite"] == results["student_pruned.keras"]


@pytest.mark.slow
def test_predict_reports_bad_images_and_goes_on(exported, frames, tmp_path, capsys):
    run_dir, _ = exported
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not an image")
    code, lines, err = _predict(capsys, os.path.join(run_dir, "student_int8.tflite"),
                                [str(fake), frames[0]])
    assert code == 1
    assert str(fake) in err and "not an image" in err
    assert lines[0]["image"] == str(fake) and "error" in lines[0]
    assert "top3" in lines[1]


def test_predict_missing_model_is_a_usage_error(tmp_path, capsys):
    code, _, err = _predict(capsys, str(tmp_path / "nope.tflite"), ["x.jpg"])
    assert code == 2 and "nope.tflite: no such file" in err


@pytest.mark.slow
def test_evaluate_cli_on_an_image_folder(exported, tmp_path, capsys):
    from keras_endokd import evaluate

    run_dir, _ = exported
    for label, name in enumerate(CLASSES):
        os.makedirs(tmp_path / "data" / name)
        for i in range(10):
            _frame(COLOURS[label], 60, 50, seed=i).save(tmp_path / "data" / name / f"{i}.png")
    for model in ("student_int8.tflite", "student_pruned.keras"):
        out = tmp_path / f"eval_{model}"
        code = evaluate.main(["evaluate", f"--model={os.path.join(run_dir, model)}",
                              "--dataset=folder", f"--data_dir={tmp_path / 'data'}",
                              f"--output_dir={out}"])
        assert code == 0, capsys.readouterr().err
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["student"]["num_images"] == 8  # 20% of 10 per class
        assert metrics["student"]["class_names"] == list(CLASSES)
        assert metrics["student"]["accuracy"] > 0.5
        assert (out / "confusion_matrix.png").stat().st_size > 0
    os.rename(tmp_path / "data" / "blue", tmp_path / "data" / "zz_blue")  # classes out of order
    code = evaluate.main(["evaluate", f"--model={os.path.join(run_dir, 'student_int8.tflite')}",
                          "--dataset=folder", f"--data_dir={tmp_path / 'data'}",
                          f"--output_dir={tmp_path / 'eval_bad'}"])
    assert code == 2 and "are not dataset 'folder''s" in capsys.readouterr().err


@pytest.mark.slow
def test_a_failed_reexport_keeps_the_previous_set_and_a_good_one_leaves_no_stale_file(
        exported, tmp_path, student, source):
    from keras_endokd.deploy.deployment import ExportCheckError, export_student

    run_dir = tmp_path / "run"
    shutil.copytree(exported[0], run_dir)
    before = {name: _read(run_dir, name) for name in EXPECTED_FILES}
    # A threshold above 1 fails whatever the models do; agreement is measured on all 288 images.
    with pytest.raises(ExportCheckError) as failure:
        export_student(str(run_dir), student, source, image_size=SIZE, sparsity=0.0,
                       min_agreement=1.01)
    message = str(failure.value)
    assert "student_int8.tflite agrees with its Keras model" in message
    assert "of 288 images" in message and "below --min_agreement=1.01" in message
    assert set(os.listdir(run_dir)) == EXPECTED_FILES | {"export_failed.json"}  # no staging folder
    assert {name: _read(run_dir, name) for name in EXPECTED_FILES} == before  # untouched
    assert json.loads(_read(run_dir, "export_report.json"))["status"] == "ok"
    failed = json.loads(_read(run_dir, "export_failed.json"))
    assert failed["status"] == "failed" and "ExportCheckError" in failed["error"]
    # The suggested threshold is one that passes: the lowest measured upper bound, rounded down.
    suggested = float(re.search(r"min_agreement=([0-9.]+)\.$", message).group(1))
    uppers = [failed["checks"][k]["agreement_interval_95"][1] for k in ("float32", "int8", "android")]
    assert suggested == failed["agreement_check"]["passing_min_agreement"] <= min(uppers)
    assert suggested > 0.9

    # A good export without pruning: its set replaces the old one, student_pruned.keras included.
    report = export_student(str(run_dir), student, source, image_size=SIZE, sparsity=0.0,
                            min_agreement=suggested)
    assert set(os.listdir(run_dir)) == EXPECTED_FILES - {"student_pruned.keras"}
    assert report["status"] == "ok" and set(report["files"]) == set(os.listdir(run_dir))
    assert json.loads(_read(run_dir, "export_report.json"))["prune"]["skipped"]
    assert _read(run_dir, "student_int8.tflite") != before["student_int8.tflite"]


@pytest.mark.slow
def test_quantization_aware_training_keeps_sparsity(tmp_path, student, source):
    from keras_endokd.deploy.deployment import export_student

    report = export_student(str(tmp_path), student, source, image_size=SIZE, sparsity=0.5,
                            qat=True, fine_tune_epochs=1, batch_size=32, min_agreement=0.9)
    assert report["checks"]["int8"]["agreement_with"] == "qat"
    assert report["checks"]["int8"]["agreement"] >= 0.9
    assert abs(report["qat"]["sparsity"]["pruned_layers"] - 0.5) < 0.01


@pytest.mark.slow
def test_qat_conversion_keeps_the_trained_ranges():
    from keras_endokd.deploy import convert, quantize

    keras.utils.set_random_seed(0)
    train = _split(64, 4, size=32)
    model = quantize.quantization_aware_training(build_student(len(CLASSES), 32), train,
                                                 image_size=32, epochs=1, batch_size=32)
    images = train.images[:16].astype(np.float32)
    # The representative images only get past TF 2.21's check: two very different sets give the
    # same integer model, calibrated by the QAT ranges.
    a = convert.to_tflite(model, images, "int8", "int8")
    b = convert.to_tflite(model, np.full_like(images, 7.0), "int8", "int8")
    np.testing.assert_array_equal(TFLiteModel(a).predict(images), TFLiteModel(b).predict(images))
    q = convert.check_pixel_input(a)
    assert q["dtype"] == "int8" and abs(q["scale"] - 1) < 1e-3 and q["zero_point"] == -128

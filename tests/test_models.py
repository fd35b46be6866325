"""The student's size, taps and operations; every teacher builds offline; safe saving."""

import keras
import numpy as np
import pytest

from keras_endokd.models.fused_batchnorm import FusedBatchNormalization
from keras_endokd.models.student import build_student, student_param_table, trainable_param_count
from keras_endokd.models.taps import FEATURE_TAPS, LOGITS, tap_model
from keras_endokd.models.teachers import TEACHER_NAMES, build_teacher, load_teacher

MICRO_LAYERS = (
    keras.layers.InputLayer, keras.layers.Rescaling, keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D, keras.layers.BatchNormalization, keras.layers.ReLU,
    keras.layers.Identity, keras.layers.GlobalAveragePooling2D, keras.layers.Dropout,
    keras.layers.Dense,
)


def test_student_has_the_papers_size():
    student = build_student(num_classes=8, image_size=128)
    assert trainable_param_count(student) == 51_640
    assert abs(trainable_param_count(student) - 51_800) <= 1_000
    assert sum(n for _, n in student_param_table(student)) == trainable_param_count(student)


@pytest.mark.parametrize("training", [True, False])
def test_fused_batchnorm_computes_what_keras_batchnorm_computes(training):
    """Outputs, gradients (input, gamma, beta) and the updated moving statistics of one step equal
    Keras' BatchNormalization's, whose moving variance is the biased batch variance."""
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(0).normal(3, 2, (4, 6, 6, 5)).astype(np.float32))
    gamma = np.random.default_rng(1).normal(size=5).astype(np.float32)
    results = []
    for layer in (keras.layers.BatchNormalization(momentum=0.9), FusedBatchNormalization(momentum=0.9)):
        layer.build(x.shape)
        layer.set_weights([gamma, 0.5 * gamma, np.ones(5, np.float32), np.full(5, 2.0, np.float32)])
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(y * tf.sin(y))
        grads = tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])
        results.append([np.asarray(t) for t in (y, *grads, *layer.get_weights()[2:])])
    assert FusedBatchNormalization(momentum=0.9)._fusable(x, True, None)  # the fused kernel ran
    for name, keras_value, fused_value in zip(("y", "dx", "dgamma", "dbeta", "mean", "var"), *results):
        np.testing.assert_allclose(fused_value, keras_value, rtol=1e-5, atol=1e-4, err_msg=name)
    if training:
        assert not np.allclose(results[1][4], 1.0)  # the moving statistics moved


def test_student_taps_and_logits_shapes():
    taps = tap_model(build_student(8, 128), [*FEATURE_TAPS, LOGITS])
    shapes = {k: tuple(v.shape[1:]) for k, v in taps.output.items()}
    assert shapes == {"feat_1": (32, 32, 32), "feat_2": (16, 16, 64), "feat_3": (8, 8, 104), "logits": (8,)}


def test_a_stride_1_stem_keeps_the_parameters_and_doubles_every_tap():
    from keras_endokd.models.student import separable_cnn

    full = separable_cnn(8, 128, stem_stride=1)
    assert trainable_param_count(full) == 51_640
    shapes = {k: tuple(v.shape[1:3]) for k, v in tap_model(full, FEATURE_TAPS).output.items()}
    assert shapes == {"feat_1": (64, 64), "feat_2": (32, 32), "feat_3": (16, 16)}
    with pytest.raises(ValueError, match="stem_stride"):
        separable_cnn(8, 128, stem_stride=4)


def test_student_uses_only_microcontroller_operations():
    for layer in build_student(8, 128).layers:
        assert isinstance(layer, MICRO_LAYERS), f"{layer.name} is a {type(layer).__name__}"


def test_student_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="image_size"):
        build_student(8, 16)
    with pytest.raises(ValueError, match="num_classes"):
        build_student(1, 128)


@pytest.mark.parametrize("name", TEACHER_NAMES)
def test_every_registered_teacher_builds_offline_with_taps(name):
    teacher = build_teacher(name, num_classes=5, image_size=64)
    outputs = tap_model(teacher, [*FEATURE_TAPS, LOGITS])(np.zeros((1, 64, 64, 3), "float32"))
    assert outputs[LOGITS].shape == (1, 5)
    strides = [64 // outputs[t].shape[1] for t in FEATURE_TAPS]
    assert strides == sorted(strides) and strides[0] >= (2 if name == "mobile_hr" else 4)


def test_every_public_name_of_the_package_resolves():
    import keras_endokd as kd
    from keras_endokd.distill.distiller import Distiller

    assert kd.Distiller is Distiller and kd.build_student is build_student
    assert all(getattr(kd, name) is not None for name in kd.__all__) and set(kd.__all__) <= set(dir(kd))
    with pytest.raises(AttributeError, match="no attribute 'Distilller'"):
        kd.Distilller


def test_unknown_teacher_names_the_choices():
    with pytest.raises(ValueError, match="small_resnet"):
        build_teacher("resnet9000")


def test_student_and_teacher_reload_safely_and_identically(tmp_path):
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    for model in (build_student(4, 64), build_teacher("mobilenetv2", 4, 64)):
        path = str(tmp_path / f"{model.name}.keras")
        model.save(path)
        again = keras.saving.load_model(path, safe_mode=True)
        np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    loaded = load_teacher(str(tmp_path / "teacher_mobilenetv2.keras"), num_classes=4, image_size=64)
    assert loaded.name == "teacher_mobilenetv2"
    with pytest.raises(ValueError, match="needs"):
        load_teacher(str(tmp_path / "teacher_mobilenetv2.keras"), num_classes=8, image_size=64)
    with pytest.raises(ValueError, match="not a keras-endokd teacher"):
        plain = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Flatten(), keras.layers.Dense(4)])
        plain.save(tmp_path / "plain.keras")
        load_teacher(str(tmp_path / "plain.keras"), num_classes=4, image_size=64)

"""Deployment utilities on tiny converted Keras models: LiteRT runner, metadata, TFLM C array."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_endokd.deploy import litert, metadata, micro

pytestmark = pytest.mark.xdist_group("test_deploy_utils")  # its module fixtures are built once, on one worker

LABELS = ["normal", "polyp", "ulcer", "bleeding"]


def _images(n, seed):
    """Flat-coloured noisy images: unlike pure noise, their pooled features differ per image."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0, 255, (n, 1, 1, 3))
    return np.clip(colours + rng.normal(0, 20, (n, 32, 32, 3)), 0, 255).astype(np.float32)


def _tiny_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Conv2D(16, 1)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(4)(x)
    outputs = keras.layers.Softmax()(x)
    model = keras.Model(inputs, outputs)
    dense = model.layers[-2]  # larger logits than at initialization: decisive, untied top-1
    dense.set_weights([w * 10 for w in dense.get_weights()])
    return model


def _convert(model, input_type=None, output_type=None):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if input_type is not None:
        def representative():
            for image in _images(32, seed=1):
                yield [image[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = input_type
        converter.inference_output_type = output_type
    return converter.convert()


@pytest.fixture(scope="module")
def models():
    model = _tiny_model()
    return {
        "keras": model,
        "float32": _convert(model),
        "int8": _convert(model, tf.int8, tf.int8),
        "uint8": _convert(model, tf.uint8, tf.uint8),
    }


@pytest.fixture(scope="module")
def images():
    return _images(16, seed=0)


def test_float_model_matches_keras(models, images):
    runner = litert.TFLiteModel(models["float32"])
    assert runner.input_size == (32, 32)
    expected = models["keras"].predict(images, verbose=0)
    np.testing.assert_allclose(runner.predict(images), expected, atol=1e-4)


@pytest.mark.parametrize("kind", ["int8", "uint8"])
def test_quantized_models_agree_with_keras(models, images, kind):
    assert litert.tensor_types(models[kind]) == {"inputs": [kind], "outputs": [kind]}
    probs = litert.TFLiteModel(models[kind]).predict(images)
    assert probs.dtype == np.float32 and probs.shape == (16, 4)
    expected = models["keras"].predict(images, verbose=0)
    assert np.abs(probs - expected).mean() < 0.03  # int8 steps of the softmax output: 1/256
    assert (probs.argmax(1) == expected.argmax(1)).mean() >= 0.75  # may flip on near ties


def test_predict_rejects_wrong_shape(models):
    runner = litert.TFLiteModel(models["int8"])
    with pytest.raises(ValueError, match=r"\[N, 32, 32, 3\]"):
        runner.predict(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="got \\[32, 32, 3\\]"):
        runner.predict(np.zeros((32, 32, 3), np.float32))


def test_quantize_input_rounds_and_clips():
    detail = {"dtype": np.int8, "quantization": (2.0, -128)}
    q = litert.quantize_input(np.array([0.0, 1.0, 3.0, 255.0, 600.0]), detail)
    np.testing.assert_array_equal(q, [-128, -128, -126, 0, 127])  # round half to even, clip


def test_int8_ops_all_run_on_micro(models):
    names = litert.op_names(models["int8"])
    assert "CONV_2D" in names and "DEPTHWISE_CONV_2D" in names
    assert set(names) <= micro.TFLM_BUILTIN_OPS
    assert micro.unsupported_micro_ops(models["int8"]) == []
    snippet = micro.op_resolver_snippet(models["int8"])
    assert f"static tflite::MicroMutableOpResolver<{len(names)}> resolver;" in snippet
    assert "resolver.AddConv2D();" in snippet and "resolver.AddDepthwiseConv2D();" in snippet


def test_add_method_names():
    assert micro.add_method("FULLY_CONNECTED") == "AddFullyConnected"
    assert micro.add_method("AVERAGE_POOL_2D") == "AddAveragePool2D"
    assert micro.add_method("RELU6") == "AddRelu6"
    assert micro.add_method("PADV2") == "AddPadV2"
    assert micro.add_method("UNIDIRECTIONAL_SEQUENCE_LSTM") == "AddUnidirectionalSequenceLSTM"


@pytest.mark.parametrize("kind", ["float32", "uint8"])
def test_metadata_round_trip(models, images, kind):
    tagged = metadata.write_metadata(models[kind], labels=LABELS, name="tiny",
                                     description="A test model.", version="0.1",
                                     license="Apache-2.0")
    meta = metadata.read_metadata(tagged)
    assert meta["name"] == "tiny" and meta["description"] == "A test model."
    assert meta["min_parser_version"] == "1.0.0" and meta["author"] == "keras-endokd"
    (image,), (probs,) = meta["inputs"], meta["outputs"]
    assert image["color_space"] == "RGB" and image["content"] == "ImageProperties"
    assert image["normalization"] == {"mean": [0.0], "std": [1.0]}
    assert image["stats"] == {"max": [255.0], "min": [0.0]}
    assert probs["content"] == "FeatureProperties"
    recorded = [(f["name"], f["type"]) for f in probs["associated_files"]]
    assert recorded == [("labels.txt", "TENSOR_AXIS_LABELS")]
    files = metadata.read_associated_files(tagged)
    assert files["labels.txt"].decode().splitlines() == LABELS
    before = litert.TFLiteModel(models[kind]).predict(images)
    np.testing.assert_array_equal(litert.TFLiteModel(tagged).predict(images), before)
    # Writing again replaces the metadata and the zip instead of stacking them.
    again = metadata.write_metadata(tagged, labels=LABELS[::-1], name="tiny2", description="",
                                    input_mean=(127.5,), input_std=(127.5,), version="0.2",
                                    license="")
    norm = metadata.read_metadata(again)["inputs"][0]["normalization"]
    assert norm == {"mean": [127.5], "std": [127.5]}
    assert list(metadata.read_associated_files(again)) == ["labels.txt"]
    assert metadata.read_associated_files(again)["labels.txt"].decode().splitlines() == LABELS[::-1]
    assert abs(len(again) - len(tagged)) < 64


def test_metadata_rejects_label_count(models):
    with pytest.raises(ValueError, match="4 values"):
        metadata.write_metadata(models["float32"], labels=["a", "b"], name="x", description="",
                                version="1", license="")
    with pytest.raises(ValueError, match="no TFLITE_METADATA"):
        metadata.read_metadata(models["float32"])


def test_c_array_round_trip(models, tmp_path):
    data = models["int8"]
    cc_path, h_path = micro.write_c_array(data, tmp_path)
    cc, h = open(cc_path).read(), open(h_path).read()
    assert "alignas(16) const unsigned char g_model_data[] = {" in cc
    assert f"const unsigned int g_model_data_len = {len(data)};" in cc
    assert '#include "model_data.h"' in cc
    assert "extern const unsigned char g_model_data[];" in h and "#ifndef MODEL_DATA_H_" in h
    assert micro.parse_c_array(cc) == data
    assert max(len(line.split(", ")) for line in cc.splitlines() if line.startswith("  0x")) == 12
    assert sorted(os.listdir(tmp_path)) == ["model_data.cc", "model_data.h"]  # no temp files left


def test_measure_arena(models):
    import tflite_micro  # noqa: F401  (a dependency: a missing install must fail here, not skip)
    arena = micro.measure_arena(models["int8"])
    assert 0 < arena["arena_used_bytes"] < 1 << 20
    assert arena["arena_size_recommended"] >= arena["arena_used_bytes"] + 1024
    assert arena["arena_size_recommended"] % 1024 == 0
    assert arena["ops"] == litert.op_names(models["int8"])


def test_measure_arena_isolated_matches_and_survives_a_failing_model(models):
    import tflite_micro  # noqa: F401  (a dependency: a missing install must fail here, not skip)
    assert micro.measure_arena_isolated(models["int8"]) == micro.measure_arena(models["int8"])
    with pytest.raises(RuntimeError, match="arena failed \\(exit code 1\\)"):  # this process lives on
        micro.measure_arena_isolated(models["int8"][: len(models["int8"]) // 2])


def test_one_export_converts_to_the_models_from_keras_model_gives():
    """`convert.exported` writes the SavedModel that `from_keras_model` writes before each
    conversion: the converted models match it tensor for tensor; only the converter's own
    CONVERSION_METADATA (which records the source format) differs."""
    from tensorflow.lite.tools import flatbuffer_utils

    from keras_endokd.deploy.convert import exported, to_tflite

    model = _tiny_model()
    representative = _images(32, seed=1)
    with exported(model) as source:
        assert os.path.isdir(source)
        once = [to_tflite(source), to_tflite(source, representative, "int8", "int8", per_channel=False)]
    assert not os.path.exists(source)  # removed on exit
    each = [to_tflite(model), to_tflite(model, representative, "int8", "int8", per_channel=False)]
    for a, b in zip(once, each):
        ma, mb = (flatbuffer_utils.convert_bytearray_to_object(bytearray(m)) for m in (a, b))
        own = {m.buffer for m in ma.metadata if m.name == b"CONVERSION_METADATA"}
        assert len(ma.buffers) == len(mb.buffers) and own
        for i, (x, y) in enumerate(zip(ma.buffers, mb.buffers)):
            if i not in own:
                assert (x.data is None and y.data is None) or np.array_equal(x.data, y.data), i
        for x, y in zip(ma.subgraphs[0].tensors, mb.subgraphs[0].tensors):
            assert x.name == y.name and x.shape.tolist() == y.shape.tolist()
            assert (x.quantization is None) == (y.quantization is None)
            if x.quantization is not None and x.quantization.scale is not None:
                assert np.array_equal(x.quantization.scale, y.quantization.scale)
    probabilities = litert.TFLiteModel(once[0]).predict(_images(4, seed=2))
    np.testing.assert_allclose(probabilities, model.predict(_images(4, seed=2), verbose=0), atol=1e-5)

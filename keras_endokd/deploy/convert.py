"""Keras -> TFLite with TensorFlow's converter: float32, and full-integer int8 with uint8/int8 I/O.

Every deployed model ends in a Softmax (`probability_model`), so a device reads probabilities.

Conversion starts from the Keras 3 model itself: `exported(model)` writes it once as a SavedModel
with a `serve` endpoint that calls it with `training=False`, exactly what
`TFLiteConverter.from_keras_model(model)` does before every conversion, and each conversion reads
it with `from_saved_model` (an export costs more than the conversion itself, and a deployment
converts one model four times). `from_concrete_functions` is never used: on Keras 3 models it
silently builds broken models (see shared TRAPS.md). tf_keras models (quantization-aware-trained
twins) go through `from_keras_model`.

The integer models take raw pixels: the input quantization must map the pixel byte p to the
value p the model was trained on (uint8: scale 1, zero point 0; int8: scale 1, zero point
-128, i.e. q = p - 128). The converter calibrates the input range from the representative
images, so `quantize.representative_images` pins it to [0, 255] and `input_quantization`
checks the result.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import warnings
from typing import Iterator, Optional, Union

import keras
import numpy as np
import tensorflow as tf

_TF_TYPES = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}


def probability_model(student: keras.Model) -> keras.Model:
    """The student (logits) topped with a Softmax layer named `probability`; shares weights."""
    outputs = keras.layers.Softmax(name="probability")(student.output)
    return keras.Model(student.input, outputs, name=f"{student.name}_probability")


@contextlib.contextmanager
def exported(model) -> Iterator[Union[str, object]]:
    """What `to_tflite` converts, for several conversions of one model: a Keras 3 functional
    model's SavedModel folder (deleted on exit), or any other model itself."""
    if not isinstance(model, keras.src.models.Functional):
        yield model
        return
    folder = tempfile.mkdtemp(prefix="keras_endokd_export_")
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        signature = [tf.TensorSpec(x.shape, x.dtype, name=x.name) for x in model.inputs]
        archive.add_endpoint("serve", lambda *inputs: model(*inputs, training=False), signature)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the endpoint's signature
            archive.write_out(os.path.join(folder, "saved_model"))
        yield os.path.join(folder, "saved_model")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def to_tflite(model, representative: Optional[np.ndarray] = None, input_type: str = "float32",
              output_type: str = "float32", per_channel: bool = True) -> bytes:
    """A Keras 3 or tf_keras image model as `.tflite` bytes.

    Args:
      model: the model to convert (probabilities out), or what `exported(model)` yields.
      representative: float32 images [N, H, W, 3] in [0, 255] for full-integer quantization
        (int8 kernels and activations, TFLITE_BUILTINS_INT8 only); None converts to float32.
        A quantization-aware-trained model (tfmot's default scheme) keeps its own ranges: the
        images only get it past TF 2.21's check, which looks for the QAT ops before it has read
        the graph. With the pruning-preserving scheme the images do matter (measured: constant
        images gave a different, wrong model), so real training images are always passed.
      input_type, output_type: "float32", "uint8" or "int8" tensors at the model's boundary.
      per_channel: one weight scale per output channel (the converter's default). False gives
        one per tensor: each per-channel tensor stores a float32 scale and an int64 zero point
        per channel, ~24 KB of the student's 84 KB int8 model, so per-tensor is what fits a
        64 KB flash budget; it rounds the weights of channels with small ranges more coarsely.
        TF 2.21 exposes the switch only as the converter's `_experimental_disable_per_channel`.
    """
    for kind in (input_type, output_type):
        if kind not in _TF_TYPES:
            raise ValueError(f"tensor type must be one of {sorted(_TF_TYPES)}, got {kind!r}")
    if isinstance(model, (str, os.PathLike)):
        converter = tf.lite.TFLiteConverter.from_saved_model(os.fspath(model))
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:
        images = np.asarray(representative, np.float32)

        def dataset():
            for image in images:
                yield [image[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = _TF_TYPES[input_type]
        converter.inference_output_type = _TF_TYPES[output_type]
        converter._experimental_disable_per_channel = not per_channel
    elif (input_type, output_type) != ("float32", "float32"):
        raise ValueError("integer input/output types need representative images")
    # Converting a Keras 3 model prints the whole exported signature to stdout; the input
    # statistics the converter asks for come from the representative images.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()


def strip_strings(model_bytes) -> bytes:
    """The model without tensor names, subgraph names, description and signatures.

    TensorFlow Lite Micro reads none of them, and the int8 model's fused-op tensor names alone
    are ~8 KB of a microcontroller's flash. Inputs and outputs are found by index. The TFLite
    tool `flatbuffer_utils.strip_strings` does the work (operator codes and metadata stay).
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    flatbuffer_utils.strip_strings(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def input_quantization(model_bytes, output: bool = False) -> dict:
    """{"dtype", "scale", "zero_point"} of the model's input (or first output) tensor; scale 0:
    not quantized. A real value is (q - zero_point) * scale."""
    from keras_endokd.deploy.litert import TFLiteModel

    model = TFLiteModel(model_bytes)
    detail = model.output_details[0] if output else model.input_details
    scale, zero_point = detail["quantization"]
    return {"dtype": np.dtype(detail["dtype"]).name, "scale": float(scale),
            "zero_point": int(zero_point)}


def check_pixel_input(model_bytes, atol: float = 1e-3) -> dict:
    """Raises ValueError unless an integer input maps pixel bytes to pixel values exactly
    (uint8: scale 1, zero point 0; int8: scale 1, zero point -128). Returns the quantization."""
    q = input_quantization(model_bytes)
    expected = {"uint8": 0, "int8": -128}.get(q["dtype"])
    if expected is not None and (abs(q["scale"] - 1.0) > atol or q["zero_point"] != expected):
        raise ValueError(f"{q['dtype']} input quantization is scale {q['scale']:.6g}, zero point "
                         f"{q['zero_point']}; raw pixels need scale 1, zero point {expected}. "
                         "The representative images do not span pixel values 0 to 255.")
    return q

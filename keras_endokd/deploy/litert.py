"""Run any `.tflite` classifier with the LiteRT runtime, and inspect its flatbuffer.

Every model of this project takes raw RGB pixel values in [0, 255] and normalizes inside the
graph, so one `predict` serves float32, uint8 and int8 models alike: the quantization of the
input tensor is applied here, and quantized outputs are dequantized back to float32.

`ai_edge_litert.interpreter` is the runtime (`tf.lite.Interpreter` is deprecated); TensorFlow
is not needed to run a model.
"""

import os
import statistics
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter

try:  # The schema ships with the runtime; TensorFlow's copy is the same file.
    from ai_edge_litert import schema_py_generated as schema_fb
except ImportError:  # pragma: no cover
    from tensorflow.lite.python import schema_py_generated as schema_fb

_OP_NAMES = {v: k for k, v in vars(schema_fb.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k.lower() for k, v in vars(schema_fb.TensorType).items() if not k.startswith("_")}


def _model(tflite_bytes):
    """The root `Model` table; trailing bytes (a metadata zip) do not disturb flatbuffer reads."""
    buf = bytearray(tflite_bytes)
    if bytes(buf[4:8]) != b"TFL3":
        raise ValueError(f"not a TFLite model: file identifier {bytes(buf[4:8])!r}, not b'TFL3'")
    return schema_fb.Model.GetRootAs(buf, 0)


def _builtin_code(opcode):
    # Codes < 127 live in the old int8 field `deprecated_builtin_code`; newer ones only in
    # `builtin_code` (whose default is 0 = ADD when an old converter wrote the model).
    return max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())


def op_names(tflite_bytes) -> list:
    """Sorted, unique names of the operators the model's subgraphs use, e.g. `["CONV_2D", ...]`.

    A custom operator appears as `"CUSTOM:<custom_code>"`.
    """
    model = _model(tflite_bytes)
    names = set()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            opcode = model.OperatorCodes(subgraph.Operators(o).OpcodeIndex())
            code = _builtin_code(opcode)
            name = _OP_NAMES.get(code, f"BUILTIN_{code}")
            if code == schema_fb.BuiltinOperator.CUSTOM:
                name = f"CUSTOM:{(opcode.CustomCode() or b'').decode()}"
            names.add(name)
    return sorted(names)


def tensor_types(tflite_bytes) -> dict:
    """`{"inputs": [...], "outputs": [...]}` dtype names of the main subgraph, e.g. `"int8"`."""
    subgraph = _model(tflite_bytes).Subgraphs(0)
    names = lambda idx: [_TYPE_NAMES[subgraph.Tensors(i).Type()] for i in idx]  # noqa: E731
    return {
        "inputs": names(subgraph.InputsAsNumpy().tolist()),
        "outputs": names(subgraph.OutputsAsNumpy().tolist()),
    }


def quantize_input(images, detail) -> np.ndarray:
    """float32 pixel values -> the input tensor's dtype, with q = round(x / scale + zero_point)."""
    dtype = detail["dtype"]
    if dtype == np.float32:
        return images.astype(np.float32)
    if dtype not in (np.uint8, np.int8):
        raise ValueError(f"input dtype {np.dtype(dtype).name} is not float32, uint8 or int8")
    scale, zero_point = detail["quantization"]
    q = images / scale + zero_point if scale else images  # scale 0: no quantization parameters
    info = np.iinfo(dtype)
    return np.clip(np.round(q), info.min, info.max).astype(dtype)


def dequantize_output(values, detail) -> np.ndarray:
    """An output tensor -> float32, with x = (q - zero_point) * scale for integer tensors."""
    scale, zero_point = detail["quantization"]
    if np.issubdtype(values.dtype, np.integer) and scale:
        return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return values.astype(np.float32)


class TFLiteModel:
    """A `.tflite` image model run by LiteRT on batches of float32 RGB pixels in [0, 255].

    Args:
        path_or_bytes: a file path, or the model's bytes (metadata and its zip may be attached).
        num_threads: CPU threads of the interpreter; 1 keeps timings and results reproducible.
    """

    def __init__(self, path_or_bytes, num_threads=1):
        if isinstance(path_or_bytes, (str, os.PathLike)):
            with open(path_or_bytes, "rb") as f:
                path_or_bytes = f.read()
        self.model_bytes = bytes(path_or_bytes)
        self.interpreter = Interpreter(model_content=self.model_bytes, num_threads=num_threads)
        self.interpreter.allocate_tensors()

    @property
    def input_details(self) -> dict:
        return self.interpreter.get_input_details()[0]

    @property
    def output_details(self) -> list:
        return self.interpreter.get_output_details()

    @property
    def input_shape(self) -> tuple:
        """(H, W, C) of one image."""
        return tuple(int(d) for d in self.input_details["shape"][1:])

    @property
    def input_size(self) -> tuple:
        """(H, W) of one image."""
        return self.input_shape[:2]

    def predict(self, images):
        """Run the model on `images`, float32 [N, H, W, 3] in [0, 255].

        Returns float32 [N, ...] for a single-output model (a list of them otherwise).
        Images run one at a time: int8 graphs often hold batch-1 constants (reshape targets),
        so resizing the input to N is not safe, and batch 1 is what the devices run.
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != self.input_shape:
            raise ValueError(
                f"expected images of shape [N, {', '.join(map(str, self.input_shape))}] "
                f"(float32 RGB pixels in [0, 255]), got {list(images.shape)}"
            )
        detail, outs = self.input_details, self.output_details
        results = [[] for _ in outs]
        for image in images:
            self.interpreter.set_tensor(detail["index"], quantize_input(image[None], detail))
            self.interpreter.invoke()
            for k, out in enumerate(outs):
                results[k].append(dequantize_output(self.interpreter.get_tensor(out["index"]), out))
        stacked = [np.concatenate(r) if r else np.zeros((0, *o["shape"][1:]), np.float32)
                   for r, o in zip(results, outs)]
        return stacked[0] if len(stacked) == 1 else stacked


def latency_ms(model_bytes, num_threads: int = 1, runs: int = 50, warmup: int = 20, seed: int = 0) -> float:
    """Median milliseconds of one `invoke()` at batch 1 in LiteRT with `num_threads`, after
    `warmup` untimed invokes (the input is set once: only the model is timed)."""
    interp = Interpreter(model_content=bytes(model_bytes), num_threads=num_threads)
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    image = np.random.default_rng(seed).uniform(0, 255, detail["shape"]).astype(np.float32)
    interp.set_tensor(detail["index"], quantize_input(image, detail))
    for _ in range(warmup):
        interp.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)

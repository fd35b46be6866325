"""Mixed weight-scale granularity: per-channel scales where they pay, per-tensor elsewhere.

Why: a per-channel int8 weight tensor stores a float32 scale and an int64 zero point for every
output channel, and so does its int32 bias: 12 bytes each, 23.7 KB of the student's 84 KB int8
model. One scale per tensor fits a 64 KB flash budget (60.5 KB) but rounds the channels with
small ranges coarsely, and depthwise kernels, whose channels BatchNorm folding scales apart,
suffer most (Sheng et al. 2018, "A Quantization-Friendly Separable Convolution for MobileNets").
TensorFlow's converter offers only the global switch, so both conversions are made and, layer
by layer, the per-channel filter and bias (data and scales) replace the per-tensor ones. Both
conversions calibrate the same activation ranges from the same images (checked here), so every
layer is a valid integer layer either way.

Which layers: greedily, the one whose per-channel scales lower the error most per added byte,
while the model stays within the budget. The error is the mean squared difference between the
integer and the float model's probabilities on calibration images (training images: the test
split stays unseen), a smooth stand-in for agreement that does not hinge on near-ties.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

from keras_endokd.deploy.litert import schema_fb

_WEIGHTED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}


def _read(tflite_bytes):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))


def _write(model) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _op_name(model, op) -> str:
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)


def _scales(tensor) -> np.ndarray:
    q = tensor.quantization
    return np.asarray(q.scale if q is not None and q.scale is not None else [], np.float64)


def _layer_name(tensor_name: str) -> str:
    """The Keras layer a converted filter tensor comes from: "m/block2_dw_1/depthwise;..." ->
    "block2_dw" (the converter fuses BatchNorm into it and lists every source op)."""
    for part in tensor_name.split(";"):
        found = re.search(r"([^/]+)/(convolution|depthwise|MatMul)", part)
        if found:
            return re.sub(r"_\d+$", "", found.group(1))
    return tensor_name


def weighted_layers(per_channel_bytes, names_from=None) -> list:
    """The ops whose weights carry per-channel scales: [{"op", "type", "channels", "name"}].

    `names_from`: the same model before `strip_strings`, to name each layer by its filter tensor.
    """
    model = _read(per_channel_bytes)
    named = _read(names_from) if names_from is not None else None
    layers = []
    for i, op in enumerate(model.subgraphs[0].operators):
        kind = _op_name(model, op)
        if kind not in _WEIGHTED_OPS or len(op.inputs) < 2:
            continue
        channels = len(_scales(model.subgraphs[0].tensors[op.inputs[1]]))
        if channels > 1:
            name = ""
            if named is not None:
                raw = named.subgraphs[0].tensors[named.subgraphs[0].operators[i].inputs[1]].name
                name = _layer_name(raw.decode() if isinstance(raw, bytes) else str(raw or ""))
            layers.append({"op": i, "type": kind, "channels": channels, "name": name})
    return layers


def _check_same_graph(a, b) -> None:
    """Raises ValueError unless `a` and `b` are the same graph with the same activation ranges."""
    sa, sb = a.subgraphs[0], b.subgraphs[0]
    if ([_op_name(a, op) for op in sa.operators] != [_op_name(b, op) for op in sb.operators]
            or [list(op.inputs) for op in sa.operators] != [list(op.inputs) for op in sb.operators]
            or len(sa.tensors) != len(sb.tensors)):
        raise ValueError("the per-channel and per-tensor conversions are not the same graph")
    for i, (ta, tb) in enumerate(zip(sa.tensors, sb.tensors)):
        constant = a.buffers[ta.buffer].data is not None
        if not constant and not np.allclose(_scales(ta), _scales(tb), rtol=1e-6):
            raise ValueError(f"tensor {i} has different activation scales in the two conversions")


def splice(per_tensor_bytes, per_channel_bytes, ops: Sequence[int]) -> bytes:
    """The per-tensor model with the filters and biases of `ops` taken from the per-channel one."""
    target, source = _read(per_tensor_bytes), _read(per_channel_bytes)
    _check_same_graph(target, source)
    return _splice_into(target, source, ops)


def _splice_into(target, source, ops: Sequence[int]) -> bytes:
    """`splice` on parsed models already checked to be the same graph; `target` is modified."""
    tensors_t, tensors_s = target.subgraphs[0].tensors, source.subgraphs[0].tensors
    users = np.bincount([t.buffer for t in tensors_t], minlength=len(target.buffers))
    for i in ops:
        for index in list(target.subgraphs[0].operators[i].inputs)[1:3]:
            if index < 0:
                continue
            tensor = tensors_t[index]
            tensor.quantization = tensors_s[index].quantization
            data = source.buffers[tensors_s[index].buffer].data
            if users[tensor.buffer] == 1:
                target.buffers[tensor.buffer].data = data
            else:  # a buffer shared with another tensor keeps its data: this one gets its own
                buffer = schema_fb.BufferT()
                buffer.data = data
                target.buffers.append(buffer)
                tensor.buffer = len(target.buffers) - 1
    return _write(target)


def choose_per_channel_layers(
    per_tensor_bytes,
    per_channel_bytes,
    max_bytes: int,
    error: Callable[[bytes], float],
    names_from=None,
) -> tuple:
    """Greedily spends `max_bytes` on per-channel scales; returns (model bytes, report).

    `error(model_bytes)` scores a candidate (lower is better). Each round adds the layer that
    lowers the error most per added byte among those that keep the model within `max_bytes`;
    it stops when none fits or none lowers the error. At most n(n+1)/2 candidates for n weighted
    layers (105 for the student's 14); a progress line counts them. The per-channel model is
    parsed once, the per-tensor one once per candidate (each candidate edits its own copy).
    """
    from keras_endokd.console import progress

    layers = {layer["op"]: layer for layer in weighted_layers(per_channel_bytes, names_from)}
    source, target = _read(per_channel_bytes), _read(per_tensor_bytes)
    _check_same_graph(target, source)
    chosen: list = []
    model = _write(target)
    current = error(model)
    start = current
    trail = []
    with progress(len(layers) * (len(layers) + 1) // 2, "int8 weight-scale candidates tried") as bar:
        while True:
            best = None
            for op in sorted(set(layers) - set(chosen)):
                candidate = _splice_into(_read(per_tensor_bytes), source, chosen + [op])
                bar.update()
                if len(candidate) > max_bytes:
                    continue
                candidate_error = error(candidate)
                gain = (current - candidate_error) / max(1, len(candidate) - len(model))
                if gain > 0 and (best is None or gain > best[0]):
                    best = (gain, op, candidate, candidate_error)
            if best is None:
                break
            _, op, model, current = best
            chosen.append(op)
            trail.append({**layers[op], "bytes": len(model), "error": current})
        bar.total = bar.done  # the search stops before the worst case: the final line counts what ran
    report = {
        "max_bytes": int(max_bytes),
        "bytes": len(model),
        "per_channel_layers": [layers[op]["name"] or f"op {op}" for op in chosen],
        "per_tensor_layers": [layers[op]["name"] or f"op {op}" for op in sorted(set(layers) - set(chosen))],
        "error_per_tensor": start,
        "error": current,
        "steps": trail,
    }
    return model, report

"""TFLite model metadata (labels, normalization) written without tflite-support.

MediaPipe Tasks' ImageClassifier and the LiteRT Android samples read class names and input
normalization from the model's metadata. The official writer (`tflite-support`) needs
protobuf < 4, which TensorFlow 2.21 forbids, and mediapipe's pip wheel cannot import its own
writer; so this module builds the metadata flatbuffer with the `flatbuffers` package.

It follows tflite-support's `tensorflow_lite_support/metadata/metadata_schema.fbs` (file
identifier "M001") for the few tables an image classifier needs, and embeds it the way
`MetadataPopulator` does: the metadata is a model buffer named by a `Metadata` entry
"TFLITE_METADATA", and the associated files (labels.txt) are a ZIP archive, uncompressed
(ZIP_STORED: readers map the files in place), appended after the flatbuffer.
"""

import io
import zipfile

import flatbuffers
import numpy as np
from flatbuffers import number_types as nt
from flatbuffers.table import Table

from keras_endokd.deploy.litert import _model, schema_fb

METADATA_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
# MetadataPopulator stores the smallest parser version that understands every field used
# (metadata_version.cc); all fields written here belong to schema 1.0.0.
MIN_PARSER_VERSION = "1.0.0"

# Enum values of metadata_schema.fbs.
COLOR_SPACES = {0: "UNKNOWN", 1: "RGB", 2: "GRAYSCALE"}
CONTENT_KINDS = {0: None, 1: "FeatureProperties", 2: "ImageProperties", 3: "BoundingBoxProperties",
                 4: "AudioProperties"}
FILE_TYPES = {0: "UNKNOWN", 1: "DESCRIPTIONS", 2: "TENSOR_AXIS_LABELS", 3: "TENSOR_VALUE_LABELS",
              4: "TENSOR_AXIS_SCORE_CALIBRATION", 5: "VOCABULARY"}
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2  # union ContentProperties
_NORMALIZATION_OPTIONS = 1  # union ProcessUnitOptions
_TENSOR_AXIS_LABELS = 2
_RGB = 1

# Field slots (declaration order in metadata_schema.fbs; a union takes two slots: type, value).
_AF_NAME, _AF_DESCRIPTION, _AF_TYPE = 0, 1, 2  # AssociatedFile
_IMG_COLOR_SPACE = 0  # ImageProperties
_CONTENT_TYPE, _CONTENT_PROPS = 0, 1  # Content.content_properties
_NORM_MEAN, _NORM_STD = 0, 1  # NormalizationOptions
_PU_TYPE, _PU_OPTIONS = 0, 1  # ProcessUnit.options
_STATS_MAX, _STATS_MIN = 0, 1  # Stats
_TM_NAME, _TM_DESCRIPTION, _TM_CONTENT, _TM_PROCESS_UNITS, _TM_STATS, _TM_FILES = 0, 1, 3, 4, 5, 6
_SG_INPUTS, _SG_OUTPUTS = 2, 3  # SubGraphMetadata
_MM_NAME, _MM_DESCRIPTION, _MM_VERSION, _MM_SUBGRAPHS, _MM_AUTHOR, _MM_LICENSE = 0, 1, 2, 3, 4, 5
_MM_MIN_PARSER_VERSION = 7  # ModelMetadata; slot 6 is associated_files (model level)


# ---------------------------------------------------------------------------------------- write
def _table(b, fields, num_slots):
    """One table; `fields` maps slot -> ("offset" | "uint8", value). Children are built before."""
    b.StartObject(num_slots)
    for slot, (kind, value) in fields.items():
        if value is None:
            continue
        if kind == "offset":
            b.PrependUOffsetTRelativeSlot(slot, value, 0)
        else:
            b.PrependUint8Slot(slot, value, 0)
    return b.EndObject()


def _vector(b, offsets):
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _floats(b, values):
    return b.CreateNumpyVector(np.asarray(values, dtype=np.float32))


def _string(b, text):
    return b.CreateString(text) if text is not None else None


def _tensor(b, name, description, content, process_units=(), stats=None, files=()):
    name, description = _string(b, name), _string(b, description)
    process_units = _vector(b, list(process_units)) if process_units else None
    files = _vector(b, list(files)) if files else None
    return _table(b, {
        _TM_NAME: ("offset", name), _TM_DESCRIPTION: ("offset", description),
        _TM_CONTENT: ("offset", content), _TM_PROCESS_UNITS: ("offset", process_units),
        _TM_STATS: ("offset", stats), _TM_FILES: ("offset", files)}, 7)


def _union(b, kind, value, num_slots):
    """Content or ProcessUnit: a table whose first field is a union (slot 0: type, 1: value)."""
    return _table(b, {0: ("uint8", kind), 1: ("offset", value)}, num_slots)


def _stats(b, vmax, vmin):
    vmax, vmin = _floats(b, vmax), _floats(b, vmin)
    return _table(b, {_STATS_MAX: ("offset", vmax), _STATS_MIN: ("offset", vmin)}, 2)


def build_metadata(*, labels_file, num_inputs=1, name, description, version, author, license,
                   input_mean, input_std, input_min, input_max) -> bytes:
    """The ModelMetadata flatbuffer (identifier "M001") of an RGB image classifier."""
    b = flatbuffers.Builder(1024)
    # Input: an RGB image that a client normalizes as (x - mean) / std, values in [min, max].
    image = _table(b, {_IMG_COLOR_SPACE: ("uint8", _RGB)}, 2)
    mean, std = _floats(b, input_mean), _floats(b, input_std)
    norm = _table(b, {_NORM_MEAN: ("offset", mean), _NORM_STD: ("offset", std)}, 2)
    inputs = [_tensor(b, "image", "RGB image, pixel values in [0, 255].",
                      _union(b, _IMAGE_PROPERTIES, image, 3),
                      [_union(b, _NORMALIZATION_OPTIONS, norm, 2)],
                      _stats(b, [input_max], [input_min]))
              for _ in range(num_inputs)]
    # Output: class probabilities, one per line of the labels file (TENSOR_AXIS_LABELS).
    f_name = b.CreateString(labels_file)
    f_desc = b.CreateString("Class names, one per output index.")
    label_file = _table(b, {_AF_NAME: ("offset", f_name), _AF_DESCRIPTION: ("offset", f_desc),
                            _AF_TYPE: ("uint8", _TENSOR_AXIS_LABELS)}, 4)
    output = _tensor(b, "probability", "Probabilities of the classes.",
                     _union(b, _FEATURE_PROPERTIES, _table(b, {}, 0), 3),
                     stats=_stats(b, [1.0], [0.0]), files=[label_file])
    inputs, outputs = _vector(b, inputs), _vector(b, [output])
    subgraph = _table(b, {_SG_INPUTS: ("offset", inputs), _SG_OUTPUTS: ("offset", outputs)}, 7)
    fields = {slot: ("offset", _string(b, text)) for slot, text in [
        (_MM_NAME, name), (_MM_DESCRIPTION, description), (_MM_VERSION, version),
        (_MM_AUTHOR, author), (_MM_LICENSE, license),
        (_MM_MIN_PARSER_VERSION, MIN_PARSER_VERSION)]}
    fields[_MM_SUBGRAPHS] = ("offset", _vector(b, [subgraph]))
    b.Finish(_table(b, fields, 8), file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def _flatbuffer_end(tflite_bytes) -> bytes:
    """The model without any previously appended zip, so metadata can be rewritten."""
    try:
        with zipfile.ZipFile(io.BytesIO(tflite_bytes)) as zf:
            start = min(info.header_offset for info in zf.infolist())
        return tflite_bytes[:start]
    except (zipfile.BadZipFile, ValueError):
        return tflite_bytes


def write_metadata(tflite_bytes, *, labels, name, description, input_mean=(0.0,),
                   input_std=(1.0,), input_min=0, input_max=255, author="keras-endokd",
                   version, license) -> bytes:
    """The model with metadata and a `labels.txt` associated file, as the official populator writes.

    `input_mean`/`input_std` describe the normalization a client applies before the model;
    the project's models take raw pixels, hence the defaults 0 and 1. Existing TFLITE_METADATA
    and appended files are replaced.
    """
    labels = [str(label) for label in labels]
    if not labels or any("\n" in label for label in labels):
        raise ValueError(f"labels must be a non-empty list of one-line names, got {labels!r}")
    tflite_bytes = _flatbuffer_end(bytes(tflite_bytes))
    model = schema_fb.ModelT.InitFromObj(_model(tflite_bytes))
    subgraph = model.subgraphs[0]
    n_out = int(np.prod(subgraph.tensors[subgraph.outputs[0]].shape[1:]))
    if len(subgraph.outputs) != 1 or n_out != len(labels):
        raise ValueError(f"expected one output of {len(labels)} classes (one per label), "
                         f"got {len(subgraph.outputs)} output(s), the first with {n_out} values")
    if any(buf.offset for buf in model.buffers or []):
        raise ValueError("buffers stored outside the flatbuffer (models > 2 GB) are not supported")
    meta = build_metadata(labels_file="labels.txt", num_inputs=len(subgraph.inputs), name=name,
                          description=description, version=version, author=author, license=license,
                          input_mean=input_mean, input_std=input_std, input_min=input_min,
                          input_max=input_max)
    buffer = schema_fb.BufferT()
    buffer.data = np.frombuffer(meta, dtype=np.uint8)
    model.metadata = model.metadata or []
    entry = next((m for m in model.metadata if m.name.decode() == METADATA_NAME), None)
    if entry is None:
        entry = schema_fb.MetadataT()
        entry.name = METADATA_NAME
        model.buffers.append(buffer)
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    else:
        model.buffers[entry.buffer] = buffer
    b = flatbuffers.Builder(len(tflite_bytes) + len(meta) + 1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    out = io.BytesIO(bytes(b.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo("labels.txt", date_time=(1980, 1, 1, 0, 0, 0))  # reproducible bytes
        info.external_attr = 0o644 << 16
        zf.writestr(info, "\n".join(labels) + "\n")
    return out.getvalue()


# ----------------------------------------------------------------------------------------- read
class _Reader:
    """Field access on one table of our metadata flatbuffer, by slot number."""

    def __init__(self, buf, pos):
        self.t = Table(buf, pos)

    def _off(self, slot):
        return self.t.Offset(4 + 2 * slot)

    def string(self, slot):
        o = self._off(slot)
        return self.t.String(o + self.t.Pos).decode() if o else None

    def uint8(self, slot):
        o = self._off(slot)
        return self.t.Get(nt.Uint8Flags, o + self.t.Pos) if o else 0

    def table(self, slot):
        o = self._off(slot)
        return _Reader(self.t.Bytes, self.t.Indirect(o + self.t.Pos)) if o else None

    def tables(self, slot):
        o = self._off(slot)
        if not o:
            return []
        start = self.t.Vector(o)
        return [_Reader(self.t.Bytes, self.t.Indirect(start + 4 * i))
                for i in range(self.t.VectorLen(o))]

    def floats(self, slot):
        o = self._off(slot)
        return self.t.GetVectorAsNumpy(nt.Float32Flags, o).tolist() if o else []


def metadata_buffer(tflite_bytes):
    """The raw TFLITE_METADATA flatbuffer of a model, or None."""
    model = _model(tflite_bytes)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == METADATA_NAME:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def _tensor_dict(r):
    content = r.table(_TM_CONTENT)
    kind = content.uint8(_CONTENT_TYPE) if content else 0
    d = {"name": r.string(_TM_NAME), "description": r.string(_TM_DESCRIPTION),
         "content": CONTENT_KINDS.get(kind)}
    if kind == _IMAGE_PROPERTIES:
        d["color_space"] = COLOR_SPACES.get(content.table(_CONTENT_PROPS).uint8(_IMG_COLOR_SPACE))
    for unit in r.tables(_TM_PROCESS_UNITS):
        if unit.uint8(_PU_TYPE) == _NORMALIZATION_OPTIONS:
            norm = unit.table(_PU_OPTIONS)
            d["normalization"] = {"mean": norm.floats(_NORM_MEAN), "std": norm.floats(_NORM_STD)}
    stats = r.table(_TM_STATS)
    if stats:
        d["stats"] = {"max": stats.floats(_STATS_MAX), "min": stats.floats(_STATS_MIN)}
    d["associated_files"] = [{"name": f.string(_AF_NAME), "description": f.string(_AF_DESCRIPTION),
                              "type": FILE_TYPES.get(f.uint8(_AF_TYPE), "UNKNOWN")}
                             for f in r.tables(_TM_FILES)]
    return d


def read_metadata(tflite_bytes) -> dict:
    """The model's metadata as a plain dict (name, description, version, author, license,
    min_parser_version, inputs, outputs); raises ValueError when it has none."""
    buf = metadata_buffer(bytes(tflite_bytes))
    if buf is None:
        raise ValueError(f"the model has no {METADATA_NAME} metadata")
    if buf[4:8] != FILE_IDENTIFIER:
        raise ValueError(f"metadata file identifier is {buf[4:8]!r}, expected {FILE_IDENTIFIER!r}")
    root = _Reader(bytearray(buf), flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
    out = {key: root.string(slot) for key, slot in [
        ("name", _MM_NAME), ("description", _MM_DESCRIPTION), ("version", _MM_VERSION),
        ("author", _MM_AUTHOR), ("license", _MM_LICENSE),
        ("min_parser_version", _MM_MIN_PARSER_VERSION)]}
    subgraph = root.tables(_MM_SUBGRAPHS)[0]
    out["inputs"] = [_tensor_dict(t) for t in subgraph.tables(_SG_INPUTS)]
    out["outputs"] = [_tensor_dict(t) for t in subgraph.tables(_SG_OUTPUTS)]
    return out


def read_associated_files(tflite_bytes) -> dict:
    """`{name: bytes}` of the files zipped after the flatbuffer (empty when there are none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(bytes(tflite_bytes))) as zf:
            return {name: zf.read(name) for name in zf.namelist()}
    except zipfile.BadZipFile:
        return {}

"""The train command's distillation flags, checked without TensorFlow: the loss weighting and the
layers the losses read.

- `--student_loss_weight=w`: the Distiller's convex total w * CE + (1 - w) * sum of the terms
  (keras.distillation.Distiller's `student_loss_weight`), default 0.5.
- `--ce_weight=a` (legacy): a * CE + sum of the terms. That is (1 + a) times the convex total with
  w = a / (1 + a), and Adam's steps do not change when the loss is multiplied by a constant, so it
  maps onto w exactly. Give one of the two.
- `--teacher_taps` / `--student_taps`: the layers that stand for our models' `feat_1..3`, shallow
  to deep (`distill.registry.layer_map`): one name stands for feat_3, two for feat_2 and feat_3,
  three for all. Each method reads the taps `METHOD_TAPS` lists; a saved `.keras` teacher's layer
  names are read from its `config.json` (a zip member: no TensorFlow) and checked here.
"""

from __future__ import annotations

import difflib
import json
import math
import zipfile
from typing import List, Optional, Sequence

from keras_endokd.cli import UsageError

FEATURE_TAPS = ("feat_1", "feat_2", "feat_3")  # models.taps.FEATURE_TAPS
# distill.registry.METHOD_TAPS: the feature taps each --kd method reads.
METHOD_TAPS = {"none": (), "response": (), "feature": FEATURE_TAPS, "relation": ("feat_3",),
               "fitnets": ("feat_2",), "attention_transfer": FEATURE_TAPS, "rkd": ("feat_3",)}
DEFAULT_STUDENT_LOSS_WEIGHT = 0.5  # run_config.RunConfig.student_loss_weight


def define(flag_values) -> None:
    """Defines the four flags in the train command's `FlagValues`."""
    from absl import flags

    kw = {"flag_values": flag_values}
    flags.DEFINE_float("student_loss_weight", DEFAULT_STUDENT_LOSS_WEIGHT, "w in the total w * CE + (1 - w) * "
                       "(sum of the weighted terms), 0 to 1: keras.distillation.Distiller's student_loss_weight.", **kw)
    flags.DEFINE_float("ce_weight", None, "Legacy: a * CE + sum of the terms, trained as --student_loss_weight="
                       "a/(1+a) (Adam ignores the factor 1/(1+a) between them). Give one of the two.", **kw)
    flags.DEFINE_list("teacher_taps", None, "Layers of saved .keras teachers read as feat_1..3, shallow to deep: "
                      "one name stands for feat_3 (relation, rkd), two for feat_2,feat_3 (+ fitnets), three for "
                      "all (+ attention_transfer), e.g. conv3_block4_out,conv4_block6_out. Default: feat_1..3.", **kw)
    flags.DEFINE_list("student_taps", None, "Layers of the student read as feat_1..3, as --teacher_taps.", **kw)


def config_fields(flag_values, names: Sequence[str], teachers: Sequence[str]) -> dict:
    """The RunConfig fields of the four flags, checked (UsageError: one paragraph)."""
    given = flag_values["student_loss_weight"].present
    w = student_loss_weight(given, flag_values.student_loss_weight, flag_values.ce_weight, names)
    check_taps(names, teachers, flag_values.teacher_taps, flag_values.student_taps)
    return {"student_loss_weight": w,
            "teacher_taps": tuple(flag_values.teacher_taps) if flag_values.teacher_taps else None,
            "student_taps": tuple(flag_values.student_taps) if flag_values.student_taps else None}


def flag_warnings(flag_values, names: Sequence[str]) -> List[str]:
    """One line for each of the four flags given that has no effect with the others."""
    given = flag_values["student_loss_weight"].present
    taps = [n for n in ("teacher_taps", "student_taps") if flag_values[n].present]
    return weight_warnings(given, flag_values.student_loss_weight, names) + tap_warnings(names, taps)


def student_loss_weight(given_w: bool, w: float, ce_weight: Optional[float], names: Sequence[str]) -> float:
    """w from --student_loss_weight or the legacy --ce_weight; raises UsageError for a bad value."""
    if given_w and ce_weight is not None:
        raise UsageError(f"--student_loss_weight={w} and --ce_weight={ce_weight} both set the cross-entropy's "
                         "weight: give one (--ce_weight=a means --student_loss_weight=a/(1+a)).")
    if ce_weight is not None:
        if not (math.isfinite(ce_weight) and ce_weight >= 0):
            raise UsageError(f"--ce_weight={ce_weight} is impossible: a loss weight must be a number >= 0 "
                             "(0 switches the term off).")
        if list(names) == ["none"] and ce_weight == 0:
            raise UsageError("--ce_weight=0 with --kd=none leaves the student no loss to learn from: "
                             "give --ce_weight > 0 or a --kd method.")
        return ce_weight / (1.0 + ce_weight)
    if not (math.isfinite(w) and 0.0 <= w <= 1.0):
        raise UsageError(f"--student_loss_weight={w} is impossible: it is w in w * CE + (1 - w) * "
                         "distillation, a number from 0 to 1 (default 0.5).")
    return w


def weight_warnings(given_w: bool, w: float, names: Sequence[str]) -> List[str]:
    if not given_w:
        return []
    if list(names) == ["none"]:
        return [f"--student_loss_weight={w} has no effect: with --kd=none the student's loss is its "
                "cross-entropy alone."]
    if w == 1.0:
        return ["--student_loss_weight=1.0 gives every distillation term the weight 1 - w = 0: the student "
                "learns from the labels alone."]
    return []


def mapped_taps(names: Optional[Sequence[str]], flag: str) -> dict:
    """{feat_k: layer} for the names given (registry.layer_map, without TensorFlow)."""
    names = list(names or [])
    if len(names) > len(FEATURE_TAPS) or any(not n.strip() for n in names):
        raise UsageError(f"--{flag}={','.join(names)}: expected one to three layer names, shallow to deep "
                         "(they stand for feat_3; feat_2,feat_3; or feat_1,feat_2,feat_3).")
    return dict(zip(FEATURE_TAPS[len(FEATURE_TAPS) - len(names):], names))


def check_taps(names: Sequence[str], teachers: Sequence[str], teacher_taps, student_taps) -> None:
    """Each method's taps are named when a --*_taps flag is given; saved teachers have the layers."""
    needed = [t for n in names for t in METHOD_TAPS[n]]
    for flag, given in (("teacher_taps", teacher_taps), ("student_taps", student_taps)):
        mapped = mapped_taps(given, flag)
        if not given or not needed:  # no effect: flag_warnings says so
            continue
        missing = [t for t in FEATURE_TAPS if t in needed and t not in mapped]
        if missing:
            readers = [n for n in names if set(METHOD_TAPS[n]) & set(missing)]
            raise UsageError(
                f"--{flag}={','.join(given)} names {', '.join(mapped)} only, but --kd={','.join(readers)} also "
                f"reads {', '.join(missing)}: give {len(FEATURE_TAPS) - FEATURE_TAPS.index(missing[0])} layer "
                f"names, shallow to deep (they stand for {', '.join(FEATURE_TAPS[FEATURE_TAPS.index(missing[0]):])})."
            )
    if not teacher_taps or not needed:
        return
    registry = [t for t in teachers if not t.endswith(".keras")]
    if registry:
        raise UsageError(f"--teacher_taps names layers of saved .keras teachers, but {', '.join(registry)} "
                         "come from the registry, whose layers are feat_1..3: give only .keras files as "
                         "--teachers, or drop --teacher_taps.")
    wanted = [layer for tap, layer in mapped_taps(teacher_taps, "teacher_taps").items() if tap in needed]
    for path in teachers:
        layers = saved_layer_names(path)
        if layers is None:
            continue
        for layer in wanted:
            if layer not in layers:
                closest = difflib.get_close_matches(layer, layers, n=5, cutoff=0.0)
                raise UsageError(f"--teacher_taps: the teacher {path} has no layer '{layer}'; its closest "
                                 f"layer names are {', '.join(closest)}.")


def tap_warnings(names: Sequence[str], given: Sequence[str]) -> List[str]:
    if any(METHOD_TAPS[n] for n in names):
        return []
    return [f"--{flag} has no effect: --kd={','.join(names)} reads no feature layer." for flag in given]


def saved_layer_names(path: str) -> Optional[List[str]]:
    """The top-level layer names of a saved `.keras` model (those `get_layer` finds), or None
    when the file cannot be read that way (the Distiller then checks them after loading)."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        return [layer.get("name") or layer["config"]["name"] for layer in config["config"]["layers"]]
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
        return None

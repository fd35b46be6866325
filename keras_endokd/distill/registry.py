"""`--kd` names -> distillation losses. One plain dict; the train command composes entries.

Family names (the paper's three kinds) and the single methods they group:

    none                 no distillation: the student alone, the baseline every comparison needs
    response             ResponseDistillation (Hinton KD)
    feature              FitNetsDistillation + AttentionTransfer
    relation             FusionDistillation (teacher fusion: features, RKD, weighted KD), --fusion
    fitnets, attention_transfer, rkd: the single methods, for ablations

Each method reads the feature layers `METHOD_TAPS` names, `feat_1..3` (shallow to deep) of our
models; `student_taps` / `teacher_taps` rename them for models with other layer names (see
`layer_map`).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

from keras_endokd.distill.attention_transfer import AttentionTransfer
from keras_endokd.distill.fitnets import FitNetsDistillation
from keras_endokd.distill.fusion_distillation import FusionDistillation
from keras_endokd.distill.response import ResponseDistillation
from keras_endokd.distill.rkd import RelationalDistillation
from keras_endokd.models.taps import FEATURE_TAPS


def _fitnets(o):
    return FitNetsDistillation(student_layer_name=o["s"]["feat_2"], teacher_layer_name=o["t"]["feat_2"])


def _attention(o):
    return AttentionTransfer(student_layer_names=[o["s"][f] for f in FEATURE_TAPS],
                             teacher_layer_names=[o["t"][f] for f in FEATURE_TAPS])


KD_METHODS = {
    "none": lambda o: [],
    "response": lambda o: [ResponseDistillation(o["temperature"], o.get("mixing_weights"))],
    "feature": lambda o: [_fitnets(o), _attention(o)],
    "relation": lambda o: [FusionDistillation(o["fusion"], o["s"]["feat_3"], o["t"]["feat_3"], num_heads=o["heads"],
                                              temperature=o["temperature"], centre=o.get("centre", True))],
    "fitnets": lambda o: [_fitnets(o)],
    "attention_transfer": lambda o: [_attention(o)],
    "rkd": lambda o: [RelationalDistillation(o["s"]["feat_3"], o["t"]["feat_3"])],
}
# The feature layers each method reads, by their names in our models.
METHOD_TAPS = {"none": (), "response": (), "feature": FEATURE_TAPS, "relation": ("feat_3",),
               "fitnets": ("feat_2",), "attention_transfer": FEATURE_TAPS, "rkd": ("feat_3",)}


def layer_map(names: Optional[Sequence[str]] = None) -> Dict[str, str]:
    """{our tap: the model's layer}: 1 to 3 layer names, shallow to deep, stand for the deepest of
    `feat_1..3` (one name: feat_3; two: feat_2, feat_3; three: all); the others keep their names.

    >>> layer_map(["conv3_block4_out", "conv4_block6_out"])["feat_2"]
    'conv3_block4_out'
    """
    names = list(names or [])
    if len(names) > len(FEATURE_TAPS):
        raise ValueError(f"At most {len(FEATURE_TAPS)} tap layer names (for {', '.join(FEATURE_TAPS)}), "
                         f"got {len(names)}: {names}.")
    mapping = {tap: tap for tap in FEATURE_TAPS}
    mapping.update(zip(FEATURE_TAPS[len(FEATURE_TAPS) - len(names):], names))
    return mapping


def parse_kd(kd) -> List[str]:
    """'response,relation' (or a list) -> ['response', 'relation'], validated."""
    names = [n.strip() for n in (kd.split(",") if isinstance(kd, str) else kd) if n.strip()]
    unknown = [n for n in names if n not in KD_METHODS]
    if unknown or not names:
        raise ValueError(
            f"Unknown --kd method(s) {unknown or names!r}. Expected one or more of "
            f"{', '.join(KD_METHODS)}, comma-separated (e.g. --kd=response,relation)."
        )
    if "none" in names and len(names) > 1:
        raise ValueError(f"--kd=none cannot be combined with other methods, got {names}.")
    return names


def build_losses(
    kd,
    temperature: float = 4.0,
    fusion: str = "attention",
    heads: int = 4,
    loss_weights: Optional[Dict[str, float]] = None,
    mixing_weights: Optional[Iterable[float]] = None,
    centre: bool = True,
    student_taps: Optional[Sequence[str]] = None,
    teacher_taps: Optional[Sequence[str]] = None,
) -> list:
    """The distillation losses for `kd`, each term weighted from `loss_weights` where given.

    `student_taps` / `teacher_taps`: the models' layers that stand for `feat_1..3` (`layer_map`);
    by default our models' own names.

    `loss_weights` maps term names (`loss_response`, `loss_feature`, `loss_attention`,
    `loss_relation`, `loss_relation_rkd`, `loss_relation_kd`, `loss_rkd`, `loss_fusion_ce`) to weights; terms not named keep their
    defaults.
    """
    options = {"temperature": temperature, "fusion": fusion, "heads": heads, "mixing_weights": mixing_weights,
               "centre": centre, "s": layer_map(student_taps), "t": layer_map(teacher_taps)}
    losses = [loss for name in parse_kd(kd) for loss in KD_METHODS[name](options)]
    for loss in losses:
        for term in loss.loss_names:
            if loss_weights and term in loss_weights:
                loss.loss_weights[term] = float(loss_weights[term])
    return losses

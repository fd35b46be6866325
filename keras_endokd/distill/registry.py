"""`--kd` names -> distillation losses. One plain dict; the train command composes entries.

Family names (the paper's three kinds) and the single methods they group:

    none                 no distillation: the student alone, the baseline every comparison needs
    response             ResponseDistillation (Hinton KD)
    feature              FitNetsDistillation + AttentionTransfer
    relation             FusionDistillation (teacher fusion: features, RKD, weighted KD), --fusion
    fitnets, attention_transfer, rkd: the single methods, for ablations
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

from keras_endokd.distill.attention_transfer import AttentionTransfer
from keras_endokd.distill.fitnets import FitNetsDistillation
from keras_endokd.distill.fusion_distillation import FusionDistillation
from keras_endokd.distill.response import ResponseDistillation
from keras_endokd.distill.rkd import RelationalDistillation

KD_METHODS = {
    "none": lambda o: [],
    "response": lambda o: [ResponseDistillation(o["temperature"], o.get("mixing_weights"))],
    "feature": lambda o: [FitNetsDistillation(), AttentionTransfer()],
    "relation": lambda o: [FusionDistillation(o["fusion"], num_heads=o["heads"], temperature=o["temperature"],
                                              centre=o.get("centre", True))],
    "fitnets": lambda o: [FitNetsDistillation()],
    "attention_transfer": lambda o: [AttentionTransfer()],
    "rkd": lambda o: [RelationalDistillation()],
}


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
) -> list:
    """The distillation losses for `kd`, each term weighted from `loss_weights` where given.

    `loss_weights` maps term names (`loss_response`, `loss_feature`, `loss_attention`,
    `loss_relation`, `loss_relation_rkd`, `loss_relation_kd`, `loss_rkd`, `loss_fusion_ce`) to weights; terms not named keep their
    defaults.
    """
    options = {"temperature": temperature, "fusion": fusion, "heads": heads, "mixing_weights": mixing_weights,
               "centre": centre}
    losses = [loss for name in parse_kd(kd) for loss in KD_METHODS[name](options)]
    for loss in losses:
        for term in loss.loss_names:
            if loss_weights and term in loss_weights:
                loss.loss_weights[term] = float(loss_weights[term])
    return losses

"""The methods `experiments.kd_study` compares: names, table labels, the headline's settings.

A `Method` is one arm of the comparison. Every arm trains on the same input stream (the run's
`train_inputs`, `views` by default: see keras_endokd.run_config.TRAIN_INPUTS) with the same schedule,
so two arms differ in their loss only; the one exception is `none-fresh`, the student alone on
fresh augmentation, measured so that the baseline is not handicapped by the fixed views.
"""

from __future__ import annotations

import dataclasses

# The headline method's settings (the relation run of the main table): heads and temperature.
HEADS, TEMPERATURE = 4, 4.0
# Ablations of the headline recipe: RunConfig overrides, and the table's wording.
VARIANTS = {
    "withkd": ({"loss_weights": {"loss_relation_kd": 1.0}}, "with its weighted KD term at weight 1"),
    "nocentre": ({"relation_centre": False}, "without centring"),
    "paperrkd": ({"loss_weights": {"loss_relation_rkd": 1.0}}, "RKD at Park et al.'s full 25 d + 50 a"),
    "warmup": ({"fusion_warmup_epochs": 2}, "after a 2-epoch warm-up of the fusion"),
}
_FAMILY = {"none": "Student alone (no KD)", "response": "Response", "feature": "Feature",
           "relation": "Relation"}
_FUSION = {"mean": "mean fusion", "confidence": "confidence-weighted fusion",
           "attention": "MHA fusion"}


@dataclasses.dataclass(frozen=True)
class Method:
    """One distillation method; settings it does not read are kept at the headline values, so
    two spellings of one method share a name and its runs."""

    kd: str
    fusion: str = "attention"
    heads: int = HEADS
    temperature: float = TEMPERATURE
    inputs: str = "views"  # the run's train_inputs
    variant: str = ""  # a key of VARIANTS: an ablation of the recipe

    def overrides(self) -> dict:
        """RunConfig fields this method sets beyond kd, fusion, heads, temperature and inputs."""
        return dict(VARIANTS[self.variant][0]) if self.variant else {}

    def __post_init__(self):
        if self.variant and self.variant not in VARIANTS:
            raise ValueError(f"Unknown variant {self.variant!r}; expected one of {sorted(VARIANTS)}.")
        kinds = self.kd.split(",")
        if "relation" not in kinds or self.fusion != "attention":
            object.__setattr__(self, "heads", HEADS)
        if "relation" not in kinds:
            object.__setattr__(self, "fusion", "attention")
        if "response" not in kinds and "relation" not in kinds:
            object.__setattr__(self, "temperature", TEMPERATURE)

    @property
    def uses_cache(self) -> bool:
        """Reads the seed's teacher cache (the views with every teacher's outputs): a distilled
        arm on the views. experiments.study_runner builds it before the seed's first such run."""
        return self.kd != "none" and self.inputs == "views"

    @property
    def reads_views(self) -> bool:
        """Reads the seed's views without teacher outputs: the student alone on the views."""
        return self.kd == "none" and self.inputs == "views"

    @property
    def name(self) -> str:
        """Folder and file name: `relation-attention`, `response+relation-attention-T2`."""
        kinds = self.kd.split(",")
        parts = ["+".join(kinds)]
        if "relation" in kinds:
            parts.append(self.fusion)
            if self.heads != HEADS:
                parts.append(f"h{self.heads}")
        if ("response" in kinds or "relation" in kinds) and self.temperature != TEMPERATURE:
            parts.append(f"T{self.temperature:g}")
        if self.inputs != "views":
            parts.append(self.inputs)
        if self.variant:
            parts.append(self.variant)
        return "-".join(parts)

    @property
    def label(self) -> str:
        """Table row name: `Relation (MHA fusion, 4 heads)`."""
        kinds = self.kd.split(",")
        details = []
        if "relation" in kinds:
            heads = f", {self.heads} heads" if self.fusion == "attention" else ""
            details.append(_FUSION[self.fusion] + heads)
        if "response" in kinds or "relation" in kinds:
            details.append(f"T={self.temperature:g}")
        if self.inputs == "fresh":
            details.append("fresh augmentation")
        if self.variant:
            details.append(VARIANTS[self.variant][1])
        text = " + ".join(_FAMILY[k] for k in kinds)
        return text + (f" ({'; '.join(details)})" if details else "")


HEADLINE = Method("relation", "attention")
RECIPE_ABLATIONS = tuple(Method("relation", "attention", variant=v) for v in VARIANTS)
BASELINES = (Method("none"), Method("none", inputs="fresh"))
# Over every seed of the study: the two baselines, one method of each family, and the fusion
# comparison the headline rests on (attention against mean).
MAIN_METHODS = (*BASELINES, Method("response"), Method("feature"), Method("relation", "mean"), HEADLINE)
# Over the ablation seeds only (the 60-minute budget): CA-MKD fusion, and every family together.
OTHER_METHODS = (Method("relation", "confidence"), Method("response,feature,relation", "attention"))
# What `--ablations` may name (Method.name): the default ablations, each recipe variant with
# mean fusion too, so that a change of recipe can be paired on both fusions, and the two fusions
# on fresh augmentation with live teachers (`relation-attention-fresh`), the input stream of the
# student alone's `none-fresh` arm.
DEFAULT_ABLATIONS = (*OTHER_METHODS, *RECIPE_ABLATIONS)
ABLATIONS = {m.name: m for m in (*DEFAULT_ABLATIONS,
                                 *(Method("relation", "mean", variant=v) for v in VARIANTS),
                                 *(Method("relation", f, inputs="fresh") for f in ("attention", "mean")))}

"""Every setting of a run (`RunConfig`), and the Keras and tf.data objects they resolve to.

`python -m keras_endokd.train` maps its flags one to one onto `RunConfig`; `config.json` in a run
folder is `dataclasses.asdict(RunConfig)`, and `load_config` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Optional, Tuple

import keras
import numpy as np

from keras_endokd import run_folder
from keras_endokd.data.tf_datasets import make_dataset
from keras_endokd.data.source import DatasetSource
from keras_endokd.models.teachers import DEFAULT_TEACHERS


# "views": `teacher_views` augmented views of each training image, rendered once; each epoch draws
#   one view per image in a seeded order (distill.teacher_cache). The student alone and every
#   distilled arm with the same seed train on identical batches; only the loss differs.
# "fresh": new augmentation draws every batch; teachers then run live on each batch.
TRAIN_INPUTS = ("views", "fresh")


@dataclasses.dataclass
class RunConfig:
    """Every setting of a run; the train command's flags map onto these one to one."""

    kd: str = "relation"
    fusion: str = "attention"
    heads: int = 4
    # Relation: centre the fused target and the student's features before matching them.
    relation_centre: bool = True
    # Relation: epochs that train the fusion and its head alone before the student starts
    # (Distiller.warm_up_terms).
    fusion_warmup_epochs: int = 0
    dataset: str = "synthetic"
    data_dir: Optional[str] = None
    split_file: Optional[str] = None
    fold: int = 0
    crop_border: bool = False
    on_bad_image: str = "skip"
    teachers: Tuple[str, ...] = DEFAULT_TEACHERS
    teacher_weights: Optional[str] = None
    teacher_dir: Optional[str] = None
    # Use the teachers shipped in the package when their key (data and settings) matches.
    shipped_teachers: bool = True
    image_size: int = 128
    epochs: int = 20
    teacher_epochs: int = 48
    batch_size: int = 32
    learning_rate: float = 3e-3
    teacher_learning_rate: float = 2e-3
    temperature: float = 4.0
    # w of the convex total w * CE + (1 - w) * distillation (the Distiller's); 0.5 weighs the
    # cross-entropy and the sum of the terms equally.
    student_loss_weight: float = 0.5
    # The layers of the teachers / the student that stand for feat_1..3 (distill.registry.layer_map);
    # None: our models' own names.
    teacher_taps: Optional[Tuple[str, ...]] = None
    student_taps: Optional[Tuple[str, ...]] = None
    loss_weights: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    # None: `seed`. A study varies `seed` (initialisation, shuffling, augmentation) over one fixed
    # dataset and one set of teachers.
    data_seed: Optional[int] = None
    teacher_seed: Optional[int] = None
    output_dir: str = "runs/latest"
    teacher_cache: str = "auto"
    # The training input stream (see `TRAIN_INPUTS`): every arm of a comparison uses the same one.
    train_inputs: str = "views"
    teacher_views: int = 4
    # Cache every teacher tap, not just those this run's losses read: one cache then serves runs
    # with different --kd (a study's methods), at the cost of storing taps some runs never use.
    cache_all_taps: bool = False
    export: bool = True
    # The figures and report.html (the metrics are computed either way).
    report: bool = True
    sparsity: float = 0.5
    per_tensor: bool = False  # integer models with one weight scale per tensor (export)
    # Flash budget of the int8 model: per-channel scales only where they fit (export; 0: none).
    int8_max_bytes: int = 64000  # deploy.deployment.MODEL_TARGET_BYTES
    min_agreement: float = 0.99  # deploy.export_checks.DEFAULT_MIN_AGREEMENT
    verbose: Optional[int] = None
    deterministic: bool = True
    strategy: str = "default"  # keras_endokd.distribute.STRATEGIES
    cpu_devices: int = 1
    overwrite: bool = False
    resume: bool = False

    def resolved_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    def resolved_teacher_seed(self) -> int:
        return self.seed if self.teacher_seed is None else self.teacher_seed

    def resolved_teacher_dir(self) -> str:
        return self.teacher_dir or os.path.join(os.path.dirname(os.path.abspath(self.output_dir)), "teachers")


def load_config(run_dir: str) -> RunConfig:
    with open(os.path.join(run_dir, "config.json")) as f:
        raw = json.load(f)
    raw["teachers"] = tuple(raw.get("teachers", DEFAULT_TEACHERS))
    for key in ("teacher_taps", "student_taps"):
        raw[key] = None if raw.get(key) is None else tuple(raw[key])
    return RunConfig(**run_folder.upgraded(raw))


def make_datasets(cfg: RunConfig, source: DatasetSource) -> dict:
    return {
        split: make_dataset(source.splits[split], cfg.image_size, cfg.batch_size,
                            training=(split == "train"), seed=cfg.seed, crop_border=cfg.crop_border)
        for split in ("train", "val", "test")
    }


def optimizer(learning_rate: float, epochs: int, steps_per_epoch: int):
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(1, epochs * steps_per_epoch), alpha=0.01
    )
    return keras.optimizers.Adam(schedule)


def jit_compile(cfg: RunConfig):
    """XLA fails under MirroredStrategy on CPU devices (variables on another device)."""
    return "auto" if cfg.strategy == "default" else False


def verbosity(cfg: RunConfig) -> int:
    return cfg.verbose if cfg.verbose is not None else (1 if sys.stdout.isatty() else 2)


def predict_labels(model: keras.Model, dataset) -> np.ndarray:
    return np.argmax(model.predict(dataset, verbose=0), axis=-1)


def log(message: str) -> None:
    print(f"[keras-endokd] {message}", flush=True)

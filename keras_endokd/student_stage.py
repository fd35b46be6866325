"""The student of a run: its training inputs, its distillation, its test metrics.

`train_student` builds the student and the `Distiller` from the run's losses, trains it on the
`training_inputs` of `RunConfig.train_inputs` and saves `student.keras` (the student alone).
`protocol` is what every arm of a fair comparison shares (metrics.json's `protocol` entry).
"""

from __future__ import annotations

import os
import time
from typing import Optional, Tuple

import keras

from keras_endokd import atomic_files, run_folder
from keras_endokd.classification_metrics import classification_metrics, plot_confusion_matrix
from keras_endokd.data import augment
from keras_endokd.data.source import DatasetSource
from keras_endokd.data.tf_datasets import stream_fingerprint
from keras_endokd.distill.distiller import Distiller
from keras_endokd.distill.registry import build_losses
from keras_endokd.distill.teacher_cache import TeacherCache, cache_key
from keras_endokd.distill.teacher_store import data_fingerprint
from keras_endokd.models.student import build_student
from keras_endokd.models.taps import FEATURE_TAPS, LOGITS, tap_model
from keras_endokd.run_config import RunConfig, jit_compile, log, optimizer, predict_labels, verbosity


def train_student(cfg: RunConfig, source: DatasetSource, datasets: dict, teachers: list) -> Tuple[keras.Model, dict]:
    """Distils the student and saves `student.keras`; a resumed run continues from its checkpoint.

    Returns the student and {"input_stream_sha256", "final_epoch": the last epoch's logs}.

    The checkpoint (`backup/`, every epoch) is deleted only once `student.keras` is written, so
    a crash at any moment leaves one or the other. A resumed run whose student is already saved
    goes straight on to evaluation and export.
    """
    run_dir = cfg.output_dir
    student_path = os.path.join(run_dir, "student.keras")
    if cfg.resume and os.path.isfile(student_path):
        log(f"resume: {student_path} is complete; evaluating and exporting it")
        return keras.saving.load_model(student_path, safe_mode=True), {"input_stream_sha256": None}
    done = run_folder.completed_epochs(run_dir)
    if cfg.resume:
        log(f"resume: continuing from epoch {done + 1} of {cfg.epochs}" if done else
            "resume: no completed epoch was checkpointed; training from the start")
    keras.utils.set_random_seed(cfg.seed)
    student = build_student(source.num_classes, cfg.image_size)
    losses = build_losses(cfg.kd, cfg.temperature, cfg.fusion, cfg.heads, cfg.loss_weights,
                          centre=cfg.relation_centre, student_taps=cfg.student_taps, teacher_taps=cfg.teacher_taps)
    distiller = Distiller(student=student, teachers=teachers, distillation_losses=losses,
                          student_loss_weight=cfg.student_loss_weight)
    distiller.compile(optimizer=optimizer(cfg.learning_rate, cfg.epochs, len(datasets["train"])),
                      metrics=["accuracy"], jit_compile=jit_compile(cfg))
    train_ds, stream, cache = training_inputs(cfg, source, datasets, distiller)
    warmup = {}
    if cfg.fusion_warmup_epochs and not done:
        t0 = time.time()
        # A dataset of its own: the warm-up leaves the stream `fit` reads (and its order) untouched.
        batches = (cache.dataset(cfg.batch_size, cfg.seed, taps=distiller.teacher_taps)
                   if cache is not None else datasets["train"])
        warmup = distiller.warm_up_terms(batches, cfg.fusion_warmup_epochs, cfg.learning_rate)
        if warmup:
            log(f"fusion warm-up: {cfg.fusion_warmup_epochs} epochs, the fusion and its head alone "
                f"(student frozen), {', '.join(f'{k} {v:.3f}' for k, v in warmup.items())} "
                f"({time.time() - t0:.0f}s)")
    log(f"student: training for {cfg.epochs - done} epochs on {cfg.train_inputs} inputs; loss = "
        f"{distiller.objective()}")
    t0 = time.time()
    history = distiller.fit(train_ds, validation_data=datasets["val"], epochs=cfg.epochs,
                  callbacks=run_folder.training_callbacks(run_dir, cfg.resume), shuffle=False,
                  verbose=verbosity(cfg))
    log(f"student (--kd={cfg.kd}{', --fusion=' + cfg.fusion if 'relation' in cfg.kd else ''}) "
        f"trained in {time.time() - t0:.0f}s")
    if cache is not None:
        cache.close()
    atomic_files.save_model(student, student_path)
    run_folder.clear_backup(run_dir)
    # The last epoch's logs: every loss term, and the fusion's diagnostics (attention entropy,
    # mean weight per teacher), so a reader sees whether the fusion uses the student's query.
    final = {k: float(v[-1]) for k, v in history.history.items() if v}
    info = {"input_stream_sha256": stream, "final_epoch": final}
    if warmup:
        info["fusion_warmup"] = {"epochs": cfg.fusion_warmup_epochs, "last_epoch": warmup}
    return student, info


def training_inputs(cfg: RunConfig, source: DatasetSource, datasets: dict, distiller: Distiller):
    """(batches, the stream's sha256, the cache) for `cfg.train_inputs` (fresh: no cache).

    "views": the views of every training image (distill.teacher_cache), with the teachers'
    precomputed outputs when there are teachers and `--teacher_cache` is not off; the student
    alone gets the same views and order without them. "fresh": the augmenting pipeline, teachers
    live.
    """
    if cfg.train_inputs == "fresh":
        # The fingerprint draws the pipeline's first two epochs; `fit` then takes the epochs after
        # them (a seeded pipeline redraws per iteration), the same ones in every run of this seed.
        return datasets["train"], stream_fingerprint(datasets["train"]), None
    t0 = time.time()
    cached = bool(distiller.teachers and distiller.distillation_losses and cfg.teacher_cache != "off")
    graphs = distiller.teacher_tap_models if cached else []
    if cached and cfg.cache_all_taps:
        graphs = [tap_model(t, sorted((*FEATURE_TAPS, LOGITS))) for t in distiller.teachers]
    taps = list(graphs[0].output) if graphs else []
    # What draws from the global seed next (the fusion's weights) starts equal in every arm,
    # whatever ran before in this process (teacher training, another run).
    keras.utils.set_random_seed(cfg.seed)
    views = {k: getattr(cfg, k) for k in ("image_size", "crop_border", "seed", "teacher_views")}
    views["augmentation"] = augment.SETTINGS
    views_key = cache_key([], data_fingerprint(source, ("train",)), [], **views)
    key = cache_key(distiller.teachers, views_key, taps) if cached else views_key
    root = os.path.join(cfg.resolved_teacher_dir(), "cache")
    cache = TeacherCache.build(
        source.splits["train"], graphs, cfg.image_size, num_views=cfg.teacher_views,
        seed=cfg.seed, crop_border=cfg.crop_border,
        # the student alone follows --teacher_cache=disk too: it then reads the views its
        # distilled arms stored (a study's), or stores them for them
        mode=cfg.teacher_cache if cached or cfg.teacher_cache == "disk" else "auto",
        folder=os.path.join(root, key), views_folder=os.path.join(root, views_key),
    )
    where = f"on disk at {cache.folder}" if cache.folder else "in memory"
    what = "teacher cache" if cached else "training views (no teacher outputs)"
    log(f"{what}: {cache.num_views} views x {len(cache.labels)} images, "
        f"{cache.nbytes / 2**20:.0f} MiB {where} ({time.time() - t0:.0f}s)")
    return (cache.dataset(cfg.batch_size, cfg.seed, taps=distiller.teacher_taps if cached else []),
            cache.stream_fingerprint(cfg.seed), cache)


def protocol(cfg: RunConfig, stream_sha256: Optional[str]) -> dict:
    """What every arm of a fair comparison shares; metrics.json's `protocol` entry.

    Two runs whose protocols are equal trained on identical input batches with the same schedule;
    only their losses differed (see experiments/README.md, "The protocol").
    """
    return {
        "train_inputs": cfg.train_inputs,
        "views_per_image": cfg.teacher_views if cfg.train_inputs == "views" else None,
        "input_stream_sha256": stream_sha256,
        "epochs": cfg.epochs, "batch_size": cfg.batch_size,
        "optimizer": "adam", "schedule": "cosine decay to 1% over all steps",
        "learning_rate": cfg.learning_rate, "seed": cfg.seed,
        "data_seed": cfg.resolved_data_seed(), "teacher_seed": cfg.resolved_teacher_seed(),
        "image_size": cfg.image_size,
    }


def evaluate_student(student: keras.Model, test_ds, source: DatasetSource, run_dir: str) -> dict:
    """Test-split metrics (metrics.json's `student` entry) and the confusion-matrix PNG."""
    predictions = predict_labels(student, test_ds)
    scores = classification_metrics(source.splits["test"].labels, predictions, source.class_names)
    plot_confusion_matrix(scores["confusion_matrix"], source.class_names,
                          os.path.join(run_dir, "confusion_matrix.png"),
                          title=f"student, test accuracy {scores['accuracy']:.3f}")
    return {"student": scores, "dataset": source.describe()}

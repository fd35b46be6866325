"""One distillation run, end to end: data, teachers, student, evaluation, export.

`python -m keras_endokd.train` parses flags into a `RunConfig` and calls `run`; the experiment
scripts call `run` directly with many configs that share their teachers. Everything a run writes
goes into its run folder:

    config.json            the resolved configuration
    history.csv, logs/     per-epoch metrics (CSV, TensorBoard)
    student.keras          the student alone (no teacher inside)
    metrics.json           test-split metrics of the student and of each teacher
    confusion_matrix.png
    + the deployment files (see keras_endokd.deploy.export)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from keras_endokd import io, run_folder
from keras_endokd.data import load_dataset
from keras_endokd.data.pipeline import make_dataset
from keras_endokd.data.source import DatasetSource
from keras_endokd.distill.distiller import Distiller
from keras_endokd.distill.registry import build_losses, parse_kd
from keras_endokd.distill.teacher_cache import TeacherCache, cache_key
from keras_endokd.distill.teacher_store import SHIPPED_DIR, TeacherStore, data_fingerprint
from keras_endokd.distribute import is_chief, make_strategy, predict_locally
from keras_endokd.evaluation import classification_metrics, plot_confusion_matrix
from keras_endokd.models.student import build_student, trainable_param_count
from keras_endokd.models.taps import FEATURE_TAPS, LOGITS, tap_model
from keras_endokd.models.teachers import DEFAULT_TEACHERS, build_teacher


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
    teacher_epochs: int = 24
    batch_size: int = 32
    learning_rate: float = 3e-3
    teacher_learning_rate: float = 2e-3
    temperature: float = 4.0
    ce_weight: float = 1.0
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
    sparsity: float = 0.5
    per_tensor: bool = False  # integer models with one weight scale per tensor (export)
    # Flash budget of the int8 model: per-channel scales only where they fit (export; 0: none).
    int8_max_bytes: int = 64000  # deploy.export.MODEL_TARGET_BYTES
    min_agreement: float = 0.99  # deploy.export.DEFAULT_MIN_AGREEMENT
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


def log(message: str) -> None:
    print(f"[keras-endokd] {message}", flush=True)


def _verbose(cfg: RunConfig) -> int:
    return cfg.verbose if cfg.verbose is not None else (1 if sys.stdout.isatty() else 2)


def _optimizer(learning_rate: float, epochs: int, steps_per_epoch: int):
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(1, epochs * steps_per_epoch), alpha=0.01
    )
    return keras.optimizers.Adam(schedule)


def _jit(cfg: RunConfig):
    """XLA fails under MirroredStrategy on CPU devices (variables on another device)."""
    return "auto" if cfg.strategy == "default" else False


def predict_labels(model: keras.Model, dataset) -> np.ndarray:
    return np.argmax(model.predict(dataset, verbose=0), axis=-1)


def train_teacher(name: str, cfg: RunConfig, source: DatasetSource, datasets: dict,
                  backup_dir: Optional[str] = None) -> Tuple[keras.Model, dict]:
    """Trains one registry teacher with cross-entropy; returns it and its test scores.

    With `backup_dir`, every epoch is checkpointed there and training continues from it.
    """
    if cfg.resolved_teacher_seed() != cfg.seed:
        cfg = dataclasses.replace(cfg, seed=cfg.resolved_teacher_seed())
        datasets = make_datasets(cfg, source)
    log(f"teacher {name}: training for {cfg.teacher_epochs} epochs (none stored for these data and settings)")
    keras.utils.set_random_seed(cfg.seed)
    model = build_teacher(name, source.num_classes, cfg.image_size, weights=cfg.teacher_weights)
    trainer = Distiller(model)  # cross-entropy alone; the one training path tf.distribute needs
    trainer.compile(optimizer=_optimizer(cfg.teacher_learning_rate, cfg.teacher_epochs, len(datasets["train"])),
                    metrics=["accuracy"], jit_compile=_jit(cfg))
    start = time.time()
    callbacks = run_folder.checkpoint_callbacks(backup_dir) if backup_dir else []
    trainer.fit(datasets["train"], validation_data=datasets["val"], epochs=cfg.teacher_epochs,
                callbacks=callbacks, shuffle=False, verbose=_verbose(cfg))  # the tf.data pipeline shuffles
    predict_locally(model, tf.distribute.get_strategy())
    accuracy = float(np.mean(predict_labels(model, datasets["test"]) == source.splits["test"].labels))
    return model, {"test_accuracy": accuracy, "params": int(model.count_params()), "train_seconds": time.time() - start}


def teacher_settings(cfg: RunConfig) -> dict:
    """The settings a registry teacher's training depends on (its store key, with the data)."""
    settings = {k: getattr(cfg, k) for k in ("image_size", "crop_border", "teacher_epochs",
                                             "teacher_learning_rate", "teacher_weights", "batch_size")}
    settings["seed"] = cfg.resolved_teacher_seed()
    return settings


def obtain_teachers(cfg: RunConfig, source: DatasetSource, datasets: dict) -> Tuple[list, list]:
    """Teachers from `.keras` paths, or from the store, training those it lacks."""
    if parse_kd(cfg.kd) == ["none"]:
        return [], []
    store = TeacherStore(cfg.resolved_teacher_dir(), shipped_dir=SHIPPED_DIR if cfg.shipped_teachers else None)
    fingerprint = data_fingerprint(source)
    teachers, infos = [], []
    for name in cfg.teachers:
        if name.endswith(".keras"):
            model = build_teacher(name, source.num_classes, cfg.image_size)
            labels = predict_labels(model, datasets["test"])
            info = {"name": name, "path": name, "params": int(model.count_params()),
                    "test_accuracy": float(np.mean(labels == source.splits["test"].labels))}
            reused = True
        else:
            model, info, reused = store.load_or_train(
                name, fingerprint, teacher_settings(cfg),
                lambda backup, n=name: train_teacher(n, cfg, source, datasets, backup),
            )
        how = ("shipped with the package" if info.get("shipped") else "reused " + info["path"]) if reused \
            else "trained in %.0fs" % info["train_seconds"]
        log(f"teacher {name}: {info['params']:,} params, test accuracy {info['test_accuracy']:.3f} ({how})")
        predict_locally(model, tf.distribute.get_strategy())
        teachers.append(model)
        infos.append(info)
    return teachers, infos


def make_datasets(cfg: RunConfig, source: DatasetSource) -> dict:
    return {
        split: make_dataset(source.splits[split], cfg.image_size, cfg.batch_size,
                            training=(split == "train"), seed=cfg.seed, crop_border=cfg.crop_border)
        for split in ("train", "val", "test")
    }


def run(cfg: RunConfig) -> dict:
    """Runs the whole job and returns metrics.json's content."""
    start = time.time()
    strategy = make_strategy(cfg.strategy, cfg.cpu_devices)  # before TensorFlow's first operation
    if cfg.deterministic:
        # Same seed, same flags, same machine: same metrics. Costs parallelism in a few kernels.
        tf.config.experimental.enable_op_determinism()
    chief = is_chief(strategy)
    if not chief:  # every worker computes, one writes
        scratch = tempfile.mkdtemp(prefix="keras-endokd-worker-")
        cfg = dataclasses.replace(cfg, output_dir=os.path.join(scratch, "run"),
                                  teacher_dir=os.path.join(scratch, "teachers"), export=False)
    if cfg.strategy != "default":
        log(f"strategy {cfg.strategy}: {strategy.num_replicas_in_sync} replicas in sync"
            + ("" if chief else " (this worker writes to a scratch folder)"))
    run_dir = cfg.output_dir
    run_folder.claim(run_dir, dataclasses.asdict(cfg), overwrite=cfg.overwrite, resume=cfg.resume,
                     defaults=dataclasses.asdict(RunConfig()))
    os.makedirs(run_dir, exist_ok=True)
    if not cfg.resume:
        io.write_json(os.path.join(run_dir, "config.json"), dataclasses.asdict(cfg))
    keras.utils.set_random_seed(cfg.seed)

    source = load_dataset(cfg.dataset, cfg.data_dir, cfg.split_file, cfg.fold, cfg.resolved_data_seed(),
                          cfg.image_size, on_bad_image=cfg.on_bad_image)
    sizes = {k: len(v) for k, v in source.splits.items()}
    log(f"data {source.name}: {source.num_classes} classes, {sizes} images ({time.time() - start:.0f}s)")
    if source.skipped:
        log(f"data: {len(source.skipped)} files left out (unreadable, empty, not images...), each listed "
            "with its reason under dataset.skipped in metrics.json")
    datasets = make_datasets(cfg, source)

    with strategy.scope():
        teachers, teacher_infos = obtain_teachers(cfg, source, datasets)
        student, training = train_student(cfg, source, datasets, teachers)
    predict_locally(student, strategy)

    metrics = evaluate_student(student, datasets["test"], source, run_dir)
    # Validation accuracy too: a recipe is chosen on it, never on the test split.
    metrics["student"]["val_accuracy"] = float(
        np.mean(predict_labels(student, datasets["val"]) == source.splits["val"].labels))
    metrics["student"]["params"] = trainable_param_count(student)
    metrics["teachers"] = teacher_infos
    metrics["config"] = {"kd": cfg.kd, "fusion": cfg.fusion, "dataset": cfg.dataset, "seed": cfg.seed}
    metrics["protocol"] = protocol(cfg, training.pop("input_stream_sha256"))
    metrics["training"] = training
    io.write_json(os.path.join(run_dir, "metrics.json"), metrics)
    log(f"student test accuracy {metrics['student']['accuracy']:.3f}, macro F1 "
        f"{metrics['student']['macro_f1']:.3f}, MCC {metrics['student']['mcc']:.3f}")

    if cfg.export:
        from keras_endokd.deploy.export import export_student

        export_student(run_dir, student, source, teachers, image_size=cfg.image_size,
                       sparsity=cfg.sparsity, per_tensor=cfg.per_tensor,
                       int8_max_bytes=cfg.int8_max_bytes,
                       temperature=cfg.temperature, seed=cfg.seed,
                       batch_size=cfg.batch_size, crop_border=cfg.crop_border,
                       min_agreement=cfg.min_agreement, command=" ".join(["python -m keras_endokd.train", *sys.argv[1:]]))
    log(f"run finished in {time.time() - start:.0f}s: {os.path.abspath(run_dir)}")
    if chief:
        print(next_steps(run_dir), flush=True)
    return metrics


def next_steps(run_dir: str) -> str:
    """The run's key files that exist, and the commands a user runs next."""
    files = [("student.keras", "the student (Keras)"), ("metrics.json", "test metrics"),
             ("confusion_matrix.png", "confusion matrix"),
             ("student_android.tflite", "Android model, labels in its metadata"),
             ("student_int8.tflite", "int8 model for TensorFlow Lite Micro"),
             ("model_data.cc", "the int8 model as a C array (+ model_data.h, micro_op_resolver.h)"),
             ("export_report.json", "every export check")]
    lines = [f"  {os.path.join(run_dir, name):<44} {what}" for name, what in files
             if os.path.exists(os.path.join(run_dir, name))]
    model = os.path.join(run_dir, "student_android.tflite")
    if not os.path.exists(model):
        model = os.path.join(run_dir, "student.keras")
    commands = [f"python -m keras_endokd.predict --model={model} FRAME.jpg",
                f"python -m keras_endokd.evaluate --model={os.path.join(run_dir, 'student.keras')}",
                f"python -m keras_endokd.export --run_dir={run_dir}     # prune, quantize, convert again"]
    return "\n".join(["Files:", *lines, "Next:", *(f"  {c}" for c in commands)])


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
                          centre=cfg.relation_centre)
    distiller = Distiller(student, teachers, losses, student_loss_weight=cfg.ce_weight)
    distiller.compile(optimizer=_optimizer(cfg.learning_rate, cfg.epochs, len(datasets["train"])),
                      metrics=["accuracy"], jit_compile=_jit(cfg))
    train_ds, stream, cache = training_inputs(cfg, source, datasets, distiller)
    log(f"student: training for {cfg.epochs - done} epochs on {cfg.train_inputs} inputs; loss = "
        f"{distiller.objective()}")
    t0 = time.time()
    history = distiller.fit(train_ds, validation_data=datasets["val"], epochs=cfg.epochs,
                  callbacks=run_folder.training_callbacks(run_dir, cfg.resume), shuffle=False,
                  verbose=_verbose(cfg))
    log(f"student (--kd={cfg.kd}{', --fusion=' + cfg.fusion if 'relation' in cfg.kd else ''}) "
        f"trained in {time.time() - t0:.0f}s")
    if cache is not None:
        cache.close()
    io.save_model(student, student_path)
    run_folder.clear_backup(run_dir)
    # The last epoch's logs: every loss term, and the fusion's diagnostics (attention entropy,
    # mean weight per teacher), so a reader sees whether the fusion uses the student's query.
    final = {k: float(v[-1]) for k, v in history.history.items() if v}
    return student, {"input_stream_sha256": stream, "final_epoch": final}


def training_inputs(cfg: RunConfig, source: DatasetSource, datasets: dict, distiller: Distiller):
    """(batches, the stream's fingerprint, the cache) for `cfg.train_inputs` (fresh: no cache).

    "views": the views of every training image (distill.teacher_cache), with the teachers'
    precomputed outputs when there are teachers and `--teacher_cache` is not off; the student
    alone gets the same views and order without them. "fresh": the augmenting pipeline, teachers
    live.
    """
    if cfg.train_inputs == "fresh":
        return datasets["train"], None, None
    t0 = time.time()
    cached = bool(distiller.teachers and distiller.distillation_losses and cfg.teacher_cache != "off")
    graphs = distiller.teacher_tap_models if cached else []
    if cached and cfg.cache_all_taps:
        graphs = [tap_model(t, sorted((*FEATURE_TAPS, LOGITS))) for t in distiller.teachers]
    taps = list(graphs[0].output) if graphs else []
    # The augmentation layers' draws follow TensorFlow's global seed: reset it here, so that every
    # arm renders the same views whatever ran before (teacher training, another run in-process).
    keras.utils.set_random_seed(cfg.seed)
    key = cache_key(distiller.teachers if cached else [], data_fingerprint(source, ("train",)), taps,
                    **{k: getattr(cfg, k) for k in ("image_size", "crop_border", "seed", "teacher_views")})
    cache = TeacherCache.build(
        source.splits["train"], graphs, cfg.image_size, num_views=cfg.teacher_views,
        seed=cfg.seed, crop_border=cfg.crop_border,
        mode=cfg.teacher_cache if cached else "auto",
        folder=os.path.join(cfg.resolved_teacher_dir(), "cache", key),
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


def load_config(run_dir: str) -> RunConfig:
    with open(os.path.join(run_dir, "config.json")) as f:
        raw = json.load(f)
    raw["teachers"] = tuple(raw.get("teachers", DEFAULT_TEACHERS))
    return RunConfig(**raw)

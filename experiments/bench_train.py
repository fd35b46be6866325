"""python -m experiments.bench_train: distillation speed with live teachers vs the teacher cache.

Both arms run in this one process, on the same data, split, seed, losses and epochs, their
epochs interleaved (live 1, cached 1, live 2, ...) so that drift in the machine's speed hits both.
"Live" runs every teacher on every step (as `keras.distillation` and the keras.io example do);
"cached" reads the teachers' outputs from `TeacherCache` (fixed augmented views, computed once).
Speed is the median over epochs after the first (which includes tracing) of images per second;
the cache's one-off build time is reported separately. Both students are then scored on the
test split. The last line is one JSON object with the headline figures.

    python -m experiments.bench_train [--epochs=8] [--teachers=mobile_x3,mobile_x2,mobile_x2]
        [--teacher_views=4] [--seed=0]

`--speed_only` skips the accuracy training: untrained registry teachers (`weights=None`; a
step's time does not depend on the weights) and a subset of `--speed_steps` x `--batch_size`
training images. Each arm runs `--speed_epochs` epochs of `--speed_steps` steps on it, the
first untimed (tracing, filling the input pipeline's cache); the cache is built on the same
subset after an untimed one-view warm-up build on one build batch (128 images) of it.

    python -m experiments.bench_train --teachers=resnet50,densenet121,efficientnetb0 --speed_only

Figures (both modes), N = training images of the full split, E = `--main_epochs` (default: the
train command's `RunConfig.epochs`, 20):
- images_per_s_{live,cached}: images per second of a training epoch (median of timed epochs).
- seconds_per_epoch_{live,cached} = N / images_per_s, seconds.
- cache_build_seconds: wall seconds of `TeacherCache.build` in memory (render the views, run
  every teacher once per view) on all N images; with `--speed_only`, the seconds measured on the
  subset times N / subset size (the build is a loop over batches of images, linear in N).
- speedup = images_per_s_cached / images_per_s_live (per epoch, cache build excluded).
- speedup_end_to_end = (seconds_per_epoch_live * E)
  / (cache_build_seconds + seconds_per_epoch_cached * E).
- speedup_end_to_end_ceiling = E / teacher_views: the end-to-end ratio if the student's step
  cost nothing and a view's build cost one live epoch's teacher passes per image.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from keras_endokd.cli import parse_flags  # noqa: E402

# Its own FlagValues: experiments.bench_infer defines --image_size too, and tests import both.
FLAGS = flags.FlagValues()
flags.DEFINE_integer("epochs", 8, "Epochs of each arm (accuracy mode).", flag_values=FLAGS)
flags.DEFINE_list("teachers", ["mobile_x3", "mobile_x2", "mobile_x2"],
                  "Three teachers of the default kind (a name twice costs the same per step as two "
                  "different ones: the cost is what is measured).", flag_values=FLAGS)
flags.DEFINE_string("kd", "relation", "Distillation losses of both arms.", flag_values=FLAGS)
flags.DEFINE_integer("image_size", 128, "Input size.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 32, "Batch size (the train command's default).", flag_values=FLAGS)
flags.DEFINE_string("teacher_dir", "runs/teachers", "Trained teachers are reused from here (or trained).",
                    flag_values=FLAGS)
flags.DEFINE_integer("teacher_views", 4, "Augmented views per training image in the cached arm.",
                     flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Students' initialisation, augmentation and view draws; the data "
                     "split and the teachers stay those of seed 0, so seeds vary only the students.",
                     flag_values=FLAGS)
flags.DEFINE_boolean("speed_only", False, "Time both arms on untrained teachers and a subset of "
                     "the data; no accuracy training.", flag_values=FLAGS)
flags.DEFINE_integer("speed_steps", 4, "--speed_only: steps per timed epoch; the subset holds "
                     "speed_steps x batch_size images.", flag_values=FLAGS)
flags.DEFINE_integer("speed_epochs", 6, "--speed_only: epochs per arm, the first untimed.",
                     flag_values=FLAGS)
flags.DEFINE_integer("input_wait_steps", None, "Steps of the input-wait measurement (default: 30 "
                     "after 5 warm-up; --speed_only: --speed_steps after 1); 0 skips it (null).",
                     flag_values=FLAGS)
flags.DEFINE_integer("main_epochs", None, "Student epochs of the end-to-end ratio (default: "
                     "RunConfig.epochs, the train command's default).", flag_values=FLAGS)
flags.DEFINE_float("target_speedup", None, "Per-epoch speed-up aimed for (default: 10 with "
                   "--speed_only, for ImageNet-class teachers; 3 otherwise, for the light "
                   "default teachers).", flag_values=FLAGS)
flags.DEFINE_boolean("deterministic", True, "TensorFlow op determinism, as the train command's "
                     "default.", flag_values=FLAGS)

TARGET_SPEEDUP_SPEED_ONLY, TARGET_SPEEDUP = 10.0, 3.0
JSON_KEYS = ("images_per_s_live", "images_per_s_cached", "speedup", "accuracy_live",
             "accuracy_cached", "input_wait_share_live", "input_wait_share_cached")
NEW_JSON_KEYS = ("speed_only", "teachers", "image_size", "train_images", "teacher_views",
                 "seconds_per_epoch_live", "seconds_per_epoch_cached", "cache_build_seconds",
                 "cache_build_images_measured", "main_epochs", "speedup_end_to_end",
                 "speedup_end_to_end_ceiling", "speedup_target", "speedup_target_met")


class EpochTimer:
    """Wall time of every epoch (a Keras callback, so fit's own loop is what is timed)."""

    def __init__(self):
        import keras

        outer = self

        class _Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                outer.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                outer.seconds.append(time.perf_counter() - outer.start)

        self.seconds, self.callback = [], _Callback()

    def images_per_s(self, images: int) -> float:
        steady = self.seconds[1:] or self.seconds
        return images / statistics.median(steady)


def input_wait_share(model, dataset, steps: int = 30, warmup: int = 5) -> float:
    """Share of step time spent waiting for the next batch, in a loop that times the two apart.

    `next()` on the prefetching pipeline returns at once when input keeps up with training; the
    time it does take is time the model sat idle. The first `warmup` steps (tracing, filling the
    prefetch buffer) are not counted. Run after training, on the trained model: the figure is a
    property of the pipeline, not of the weights.
    """
    iterator = iter(dataset.repeat())
    waited = computed = 0.0
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        x, y = next(iterator)
        t1 = time.perf_counter()
        model.train_on_batch(x, y)
        t2 = time.perf_counter()
        if step >= warmup:
            waited, computed = waited + (t1 - t0), computed + (t2 - t1)
    return waited / (waited + computed)


def cached_data(cfg, split, distiller):
    """`TeacherCache` in memory on `split` (`cfg.teacher_views` views per image, the distiller's
    teacher taps) and its batches, as the train command builds them."""
    from keras_endokd.distill.teacher_cache import TeacherCache

    cache = TeacherCache.build(split, distiller.teacher_tap_models, cfg.image_size,
                               num_views=cfg.teacher_views, seed=cfg.seed,
                               crop_border=cfg.crop_border, mode="memory")
    return cache.dataset(cfg.batch_size, cfg.seed, taps=distiller.teacher_taps)


def _arm(cfg, split, num_classes, teachers, train, cached: bool, warmup_split=None) -> dict:
    """A compiled distiller and its training data (the cache built and timed, for `cached`).

    `warmup_split`: a one-view cache is first built untimed on it (the teachers' eager first-call
    costs at the build's batch shape), so the timed build is the steady per-image cost.
    """
    import keras

    from keras_endokd.distill.distiller import Distiller
    from keras_endokd.distill.registry import build_losses
    from keras_endokd.models.student import build_student
    from keras_endokd.run_config import optimizer

    keras.utils.set_random_seed(cfg.seed)
    distiller = Distiller(student=build_student(num_classes, cfg.image_size), teachers=teachers,
                          distillation_losses=build_losses(cfg.kd, cfg.temperature, cfg.fusion, cfg.heads))
    distiller.compile(optimizer=optimizer(cfg.learning_rate, cfg.epochs, len(train)),
                      metrics=["accuracy"])
    build_seconds = 0.0
    if cached:
        if warmup_split is not None:
            cached_data(dataclasses.replace(cfg, teacher_views=1), warmup_split, distiller)
        t0 = time.perf_counter()
        train = cached_data(cfg, split, distiller)
        build_seconds = time.perf_counter() - t0
    return {"distiller": distiller, "train": train, "timer": EpochTimer(),
            "cache_build_seconds": build_seconds}


def _train_interleaved(arms, epochs: int, steps_per_epoch=None):
    """Epoch 1 of every arm, then epoch 2 of every arm, ...: a machine that speeds up or slows
    down during the benchmark (measured here: the same epoch took 6 s, then 10 s, minutes apart)
    shifts both arms alike instead of biasing the ratio. With `steps_per_epoch`, an epoch is
    that many steps of the (repeated) training data."""
    for epoch in range(epochs):
        for arm in arms:
            train = arm["train"] if steps_per_epoch is None else arm["train"].repeat()
            arm["distiller"].fit(train, initial_epoch=epoch, epochs=epoch + 1,
                                 steps_per_epoch=steps_per_epoch,
                                 callbacks=[arm["timer"].callback], shuffle=False, verbose=2)


def _wait(arm, steps: int, warmup: int):
    return input_wait_share(arm["distiller"], arm["train"], steps, warmup) if steps else None


def _score(arm, source, datasets, wait_steps: int = 30) -> dict:
    import numpy as np

    from keras_endokd.run_config import predict_labels

    n, timer = len(source.splits["train"]), arm["timer"]
    accuracy = float(np.mean(predict_labels(arm["distiller"].student, datasets["test"])
                             == source.splits["test"].labels))
    return {"images_per_s": timer.images_per_s(n), "epoch_seconds": timer.seconds,
            "input_wait_share": _wait(arm, wait_steps, 5),
            "cache_build_seconds": arm["cache_build_seconds"],
            "total_seconds": arm["cache_build_seconds"] + sum(timer.seconds), "accuracy": accuracy}


def _time_only(arm, images_per_epoch: int, wait_steps: int) -> dict:
    """`_score` without accuracy; the input wait over `wait_steps` steps after one warm-up."""
    timer = arm["timer"]
    return {"images_per_s": timer.images_per_s(images_per_epoch), "epoch_seconds": timer.seconds,
            "input_wait_share": _wait(arm, wait_steps, 1),
            "cache_build_seconds": arm["cache_build_seconds"], "accuracy": None}


def end_to_end(live_s_per_epoch: float, cached_s_per_epoch: float, build_s: float, epochs: int) -> float:
    """(live s/epoch * epochs) / (cache build s + cached s/epoch * epochs): whole-job ratio."""
    return live_s_per_epoch * epochs / (build_s + cached_s_per_epoch * epochs)


def _speed_setup(cfg, source):
    """The speed mode's data: the source with a training subset of speed_steps x batch_size
    images, and the split of the cache's warm-up build: one batch of the build's batch size
    (the eager teachers' first call at a batch shape sets up that shape's kernels)."""
    from keras_endokd.distill.teacher_cache import TeacherCache

    train = source.splits["train"]
    n = min(len(train), FLAGS.speed_steps * cfg.batch_size)
    build_batch = inspect.signature(TeacherCache.build).parameters["batch_size"].default
    subset = dataclasses.replace(source, splits={**source.splits, "train": train.subset(range(n))})
    return subset, train.subset(range(min(n, build_batch)))


def main(argv=None) -> int:
    _, code = parse_flags(FLAGS, argv, __doc__)
    if code is not None:
        return code
    import tensorflow as tf

    from keras_endokd.data import load_dataset
    from keras_endokd.models.teachers import build_teacher
    from keras_endokd.run_config import RunConfig, make_datasets
    from keras_endokd.teacher_stage import obtain_teachers

    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    speed_only = FLAGS.speed_only
    main_epochs = FLAGS.main_epochs or RunConfig().epochs
    target = FLAGS.target_speedup or (TARGET_SPEEDUP_SPEED_ONLY if speed_only else TARGET_SPEEDUP)
    cfg = RunConfig(kd=FLAGS.kd, teachers=tuple(FLAGS.teachers), image_size=FLAGS.image_size,
                    epochs=FLAGS.speed_epochs if speed_only else FLAGS.epochs,
                    batch_size=FLAGS.batch_size, teacher_dir=FLAGS.teacher_dir,
                    teacher_cache="memory", teacher_views=FLAGS.teacher_views, seed=FLAGS.seed,
                    data_seed=0, teacher_seed=0, output_dir="runs/bench_train", export=False)
    source = load_dataset(cfg.dataset, image_size=cfg.image_size, seed=cfg.resolved_data_seed())
    n_train = len(source.splits["train"])
    bench_source, warmup_split = _speed_setup(cfg, source) if speed_only else (source, None)
    datasets = make_datasets(cfg, bench_source)
    if speed_only:
        teachers = [build_teacher(name, source.num_classes, cfg.image_size) for name in cfg.teachers]
    else:
        teachers, _ = obtain_teachers(cfg, source, datasets)
    n_bench = len(bench_source.splits["train"])
    split, k = bench_source.splits["train"], source.num_classes
    arms = [_arm(cfg, split, k, teachers, datasets["train"], cached=False),
            _arm(cfg, split, k, teachers, datasets["train"], cached=True, warmup_split=warmup_split)]
    _train_interleaved(arms, cfg.epochs, FLAGS.speed_steps if speed_only else None)
    if speed_only:
        wait_steps = FLAGS.speed_steps if FLAGS.input_wait_steps is None else FLAGS.input_wait_steps
        live, cached = (_time_only(arm, n_bench, wait_steps) for arm in arms)
        cached["cache_build_seconds"] *= n_train / n_bench
    else:
        wait_steps = 30 if FLAGS.input_wait_steps is None else FLAGS.input_wait_steps
        live, cached = (_score(arm, source, datasets, wait_steps) for arm in arms)
    for r in (live, cached):
        r["seconds_per_epoch"] = n_train / r["images_per_s"]
    build = cached["cache_build_seconds"]
    speedup = cached["images_per_s"] / live["images_per_s"]
    e2e = end_to_end(live["seconds_per_epoch"], cached["seconds_per_epoch"], build, main_epochs)
    measured = (f"{FLAGS.speed_steps} steps x {cfg.batch_size} images per epoch, {cfg.epochs - 1} "
                f"timed epoch(s); cache build measured on {n_bench} images x {cfg.teacher_views} "
                f"views, scaled to {n_train}" if speed_only else f"{cfg.epochs} epochs of {n_train} images")
    print(f"\nteachers {','.join(cfg.teachers)} ({'untrained' if speed_only else 'trained'}), "
          f"{cfg.image_size}x{cfg.image_size}, --kd={cfg.kd}: {measured}")
    print(f"{'arm':8s} {'images/s':>9s} {'s/epoch':>8s} {'cache build s':>14s} "
          f"{'test acc':>9s} {'input wait':>11s}  (s/epoch: {n_train} training images)")
    for name, r in (("live", live), ("cached", cached)):
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        wait = "-" if r["input_wait_share"] is None else f"{100 * r['input_wait_share']:.1f}%"
        print(f"{name:8s} {r['images_per_s']:9.1f} {r['seconds_per_epoch']:8.2f} "
              f"{r['cache_build_seconds']:14.1f} {acc:>9s} {wait:>11s}")
    if wait_steps:
        worst = max(live["input_wait_share"], cached["input_wait_share"])
        print(f"input wait: at most {100 * worst:.1f}% of step time over {wait_steps} steps "
              f"(target < 10%: {'met' if worst < 0.1 else 'NOT met'})")
    print(f"speed-up per epoch: {speedup:.2f}x (target >= {target:g}x: {'met' if speedup >= target else 'NOT met'})")
    ceiling = main_epochs / cfg.teacher_views
    print(f"end to end incl. cache build, {main_epochs} epochs: {e2e:.2f}x (ceiling about "
          f"epochs / views = {ceiling:.2f}x: the build runs the teachers on {cfg.teacher_views} views "
          f"of every image, the live arm on {main_epochs})")
    if not speed_only:
        print(f"end to end over this benchmark's {cfg.epochs} epochs: "
              f"{live['total_seconds'] / cached['total_seconds']:.2f}x; accuracy difference "
              f"{100 * (cached['accuracy'] - live['accuracy']):+.1f} points (target within 1: "
              f"{'met' if abs(cached['accuracy'] - live['accuracy']) <= 0.01 else 'NOT met'})")
    rounded = lambda v, d: None if v is None else round(v, d)  # noqa: E731
    summary = dict(zip(JSON_KEYS, (
        round(live["images_per_s"], 1), round(cached["images_per_s"], 1), round(speedup, 2),
        rounded(live["accuracy"], 4), rounded(cached["accuracy"], 4),
        rounded(live["input_wait_share"], 4), rounded(cached["input_wait_share"], 4))))
    summary.update(zip(NEW_JSON_KEYS, (
        speed_only, list(cfg.teachers), cfg.image_size, n_train, cfg.teacher_views,
        round(live["seconds_per_epoch"], 3), round(cached["seconds_per_epoch"], 3), round(build, 2),
        n_bench * cfg.teacher_views, main_epochs, round(e2e, 3), round(ceiling, 3), target,
        bool(speedup >= target))))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

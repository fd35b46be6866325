"""python -m experiments.bench_train: distillation speed with live teachers vs the teacher cache.

Both arms run in this one process, on the same data, split, seed, losses and epochs, their
epochs interleaved (live 1, cached 1, live 2, ...) so that drift in the machine's speed hits both.
"Live" runs every teacher on every step (as `keras.distillation` and the keras.io example do);
"cached" reads the teachers' outputs from `TeacherCache` (fixed augmented views, computed once). Speed is the
median over epochs after the first (which includes tracing) of images per second; the cache's
one-off build time is reported separately, with the end-to-end ratio that includes it. Both
students are then scored on the test split. The last line is one JSON object with the headline
figures.

    python -m experiments.bench_train [--epochs=8] [--teachers=mobile_x3,mobile_x2,mobile_x2]
        [--teacher_views=4] [--seed=0]
"""

from __future__ import annotations

import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", 8, "Epochs of each arm.")
flags.DEFINE_list("teachers", ["mobile_x3", "mobile_x2", "mobile_x2"],
                  "Three teachers of the default kind (a name twice costs the same per step as two "
                  "different ones: the cost is what is measured).")
flags.DEFINE_string("kd", "relation", "Distillation losses of both arms.")
flags.DEFINE_integer("image_size", 128, "Input size.")
flags.DEFINE_string("teacher_dir", "runs/teachers", "Trained teachers are reused from here (or trained).")
flags.DEFINE_integer("teacher_views", 4, "Augmented views per training image in the cached arm.")
flags.DEFINE_integer("seed", 0, "Students' initialisation, augmentation and view draws; the data "
                     "split and the teachers stay those of seed 0, so seeds vary only the students.")


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


def _arm(cfg, source, teachers, datasets, cached: bool) -> dict:
    """A compiled distiller and its training data (the cache built and timed, for `cached`)."""
    import keras

    from keras_endokd.distill.distiller import Distiller
    from keras_endokd.distill.registry import build_losses
    from keras_endokd.models.student import build_student
    from keras_endokd.run import _optimizer, cached_training_data

    keras.utils.set_random_seed(cfg.seed)
    distiller = Distiller(build_student(source.num_classes, cfg.image_size), teachers,
                          build_losses(cfg.kd, cfg.temperature, cfg.fusion, cfg.heads))
    distiller.compile(optimizer=_optimizer(cfg.learning_rate, cfg.epochs, len(datasets["train"])),
                      metrics=["accuracy"])
    build_seconds = 0.0
    train = datasets["train"]
    if cached:
        t0 = time.perf_counter()
        train = cached_training_data(cfg, source, distiller)
        build_seconds = time.perf_counter() - t0
    return {"distiller": distiller, "train": train, "timer": EpochTimer(),
            "cache_build_seconds": build_seconds}


def _train_interleaved(arms, epochs: int):
    """Epoch 1 of every arm, then epoch 2 of every arm, ...: a machine that speeds up or slows
    down during the benchmark (measured here: the same epoch took 6 s, then 10 s, minutes apart)
    shifts both arms alike instead of biasing the ratio."""
    for epoch in range(epochs):
        for arm in arms:
            arm["distiller"].fit(arm["train"], initial_epoch=epoch, epochs=epoch + 1,
                                 callbacks=[arm["timer"].callback], shuffle=False, verbose=2)


def _score(arm, source, datasets) -> dict:
    import numpy as np

    from keras_endokd.run import predict_labels

    n, timer = len(source.splits["train"]), arm["timer"]
    accuracy = float(np.mean(predict_labels(arm["distiller"].student, datasets["test"])
                             == source.splits["test"].labels))
    return {"images_per_s": timer.images_per_s(n), "epoch_seconds": timer.seconds,
            "input_wait_share": input_wait_share(arm["distiller"], arm["train"]),
            "cache_build_seconds": arm["cache_build_seconds"],
            "total_seconds": arm["cache_build_seconds"] + sum(timer.seconds), "accuracy": accuracy}


def main(argv):
    del argv
    from keras_endokd.data import load_dataset
    from keras_endokd.run import RunConfig, make_datasets, obtain_teachers

    cfg = RunConfig(kd=FLAGS.kd, teachers=tuple(FLAGS.teachers), image_size=FLAGS.image_size,
                    epochs=FLAGS.epochs, teacher_dir=FLAGS.teacher_dir, teacher_cache="memory",
                    teacher_views=FLAGS.teacher_views, seed=FLAGS.seed, data_seed=0,
                    teacher_seed=0, output_dir="runs/bench_train", export=False)
    source = load_dataset(cfg.dataset, image_size=cfg.image_size, seed=cfg.resolved_data_seed())
    datasets = make_datasets(cfg, source)
    teachers, _ = obtain_teachers(cfg, source, datasets)
    arms = [_arm(cfg, source, teachers, datasets, cached=False), _arm(cfg, source, teachers, datasets, cached=True)]
    _train_interleaved(arms, cfg.epochs)
    live, cached = (_score(arm, source, datasets) for arm in arms)
    print(f"\n{'arm':8s} {'images/s':>9s} {'epoch s (median)':>17s} {'cache build s':>14s} {'total s':>8s} "
          f"{'test acc':>9s} {'input wait':>11s}")
    for name, r in (("live", live), ("cached", cached)):
        print(f"{name:8s} {r['images_per_s']:9.0f} {statistics.median(r['epoch_seconds'][1:] or r['epoch_seconds']):17.2f} "
              f"{r['cache_build_seconds']:14.1f} {r['total_seconds']:8.1f} {r['accuracy']:9.3f} "
              f"{100 * r['input_wait_share']:10.1f}%")
    worst = max(live["input_wait_share"], cached["input_wait_share"])
    print(f"input wait: at most {100 * worst:.1f}% of step time (target < 10%: {'met' if worst < 0.1 else 'NOT met'})")
    speedup = cached["images_per_s"] / live["images_per_s"]
    print(f"speed-up per epoch: {speedup:.2f}x (target >= 3x: {'met' if speedup >= 3 else 'NOT met'}); "
          f"end to end incl. cache build, {cfg.epochs} epochs: {live['total_seconds'] / cached['total_seconds']:.2f}x; "
          f"accuracy difference {100 * (cached['accuracy'] - live['accuracy']):+.1f} points "
          f"(target within 1: {'met' if abs(cached['accuracy'] - live['accuracy']) <= 0.01 else 'NOT met'})")
    print(json.dumps({"images_per_s_live": round(live["images_per_s"], 1),
                      "images_per_s_cached": round(cached["images_per_s"], 1),
                      "speedup": round(speedup, 2), "accuracy_live": round(live["accuracy"], 4),
                      "accuracy_cached": round(cached["accuracy"], 4),
                      "input_wait_share_live": round(live["input_wait_share"], 4),
                      "input_wait_share_cached": round(cached["input_wait_share"], 4)}))


if __name__ == "__main__":
    app.run(main)

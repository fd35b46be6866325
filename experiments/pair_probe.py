"""python -m experiments.pair_probe: can a model of the student's design learn one confusable pair?

The difficulty calibration of the embedded data needs a teacher that clearly beats the student
trained alone. With erosions drawn as thin red streaks only, both the student (51.6k parameters)
and the widest default teacher (mobile_x3, 428k) stalled near chance on esophagitis vs
normal-z-line, which capped them both; this probe found why (the streaks are not learned from 160
frames per class at widths 1-3) and which cues are. It isolates one pair as a binary task: images
from the embedded data's generator (same seed, split streams and difficulty), the student's architecture at each width, the same
training (Distiller with cross-entropy, Adam with cosine decay, the training augmentation), and
accuracy on the pair's train and test images. Train accuracy rising while test accuracy stays at
chance means the pair is memorised, not learned; a cue the calibration can use is one a wide
model learns and a narrow one does not. `--difficulty` overrides `synthetic.Difficulty` knobs to
try a redesigned cue before touching the generator's defaults.

    python -m experiments.pair_probe [--pair=esophagitis,normal-z-line] [--widths=1,3] [--stem_stride=1]
        [--per_class=160] [--epochs=30] [--difficulty='{"erosion_width_range": [0.006, 0.02]}']
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from keras_endokd.cli import parse_flags  # noqa: E402

FLAGS = flags.FlagValues()  # its own: other experiments define --image_size too
flags.DEFINE_list("pair", ["esophagitis", "normal-z-line"], "The two Kvasir-v2 class names.",
                  flag_values=FLAGS)
flags.DEFINE_list("widths", ["1", "3"], "Width multipliers of the student's design (1: the "
                  "student, 2 and 3: the mobile_x2 / mobile_x3 teachers).", flag_values=FLAGS)
flags.DEFINE_integer("stem_stride", 2, "Stride of the stem of every width (2: the student's design; "
                     "1: full resolution, the mobile_hr teacher's).", flag_values=FLAGS)
flags.DEFINE_integer("per_class", 160, "Training images per class (the embedded data has 160).",
                     flag_values=FLAGS)
flags.DEFINE_integer("test_per_class", 100, "Test images per class (the embedded data has 100).",
                     flag_values=FLAGS)
flags.DEFINE_integer("epochs", 30, "Training epochs of each width.", flag_values=FLAGS)
flags.DEFINE_float("learning_rate", 0.003, "Peak learning rate (the student's default).",
                   flag_values=FLAGS)
flags.DEFINE_integer("image_size", 128, "Input size.", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Data and training seed.", flag_values=FLAGS)
flags.DEFINE_string("difficulty", "{}", "JSON object of synthetic.Difficulty fields to override.",
                    flag_values=FLAGS)


def parse_difficulty(text: str):
    """A `synthetic.Difficulty` from a JSON object of overrides; ValueError naming a bad field."""
    from keras_endokd.data import synthetic

    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--difficulty must be a JSON object: {err}") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"--difficulty must be a JSON object, got {text!r}.")
    known = {f.name for f in dataclasses.fields(synthetic.Difficulty)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"--difficulty: unknown field(s) {unknown}; expected some of {sorted(known)}.")
    return synthetic.Difficulty(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def pair_splits(pair, per_class: int, test_per_class: int, image_size: int, seed: int, difficulty):
    """(train, test) `Split`s of the pair, labels 0 and 1, drawn by the embedded data's generator."""
    import numpy as np

    from keras_endokd.data import synthetic
    from keras_endokd.data.source import Split

    classes = [synthetic.CLASS_NAMES.index(name) for name in pair]
    splits = []
    for split, n in (("train", per_class), ("test", test_per_class)):
        labels = np.tile(classes, n)
        images = synthetic.generate(labels, image_size, seed, split, difficulty)
        splits.append(Split(labels=(labels == classes[1]).astype(np.int32), images=images))
    return splits


def probe(width: float, train, test, epochs: int, learning_rate: float, image_size: int, seed: int,
          stem_stride: int = 2) -> dict:
    """Trains the student's design at `width` (and `stem_stride`) on `train`; its accuracy on both
    splits."""
    import keras
    import numpy as np

    from keras_endokd.data.tf_datasets import make_dataset
    from keras_endokd.distill.distiller import Distiller
    from keras_endokd.models.student import separable_cnn
    from keras_endokd.run_config import optimizer

    keras.utils.set_random_seed(seed)
    data = make_dataset(train, image_size, 32, training=True, seed=seed)
    model = separable_cnn(2, image_size, width=width, name=f"probe_x{width:g}", stem_stride=stem_stride)
    trainer = Distiller(student=model)  # cross-entropy alone
    trainer.compile(optimizer=optimizer(learning_rate, epochs, len(data)), metrics=["accuracy"])
    start = time.time()
    trainer.fit(data, epochs=epochs, verbose=0, shuffle=False)

    def accuracy(split) -> float:
        logits = model.predict(make_dataset(split, image_size, 64), verbose=0)
        return float(np.mean(np.argmax(logits, -1) == split.labels))

    return {"width": width, "stem_stride": stem_stride, "params": int(model.count_params()),
            "train_accuracy": accuracy(train),
            "test_accuracy": accuracy(test), "seconds": round(time.time() - start, 1)}


def main(argv=None) -> int:
    _, code = parse_flags(FLAGS, argv, __doc__)
    if code is not None:
        return code
    from keras_endokd.data import synthetic

    try:
        difficulty = parse_difficulty(FLAGS.difficulty)
        widths = [float(w) for w in FLAGS.widths]
        if FLAGS.stem_stride not in (1, 2):
            raise ValueError(f"--stem_stride must be 1 or 2, got {FLAGS.stem_stride}.")
        bad = [name for name in FLAGS.pair if name not in synthetic.CLASS_NAMES]
        if len(FLAGS.pair) != 2 or bad:
            raise ValueError(f"--pair needs two of {', '.join(synthetic.CLASS_NAMES)}; got {FLAGS.pair}.")
    except ValueError as err:
        print(f"pair_probe: {err}", file=sys.stderr)
        return 2
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()  # as the train command's default
    train, test = pair_splits(FLAGS.pair, FLAGS.per_class, FLAGS.test_per_class, FLAGS.image_size,
                              FLAGS.seed, difficulty)
    rows = []
    for width in widths:
        rows.append(probe(width, train, test, FLAGS.epochs, FLAGS.learning_rate, FLAGS.image_size, FLAGS.seed,
                          FLAGS.stem_stride))
        r = rows[-1]
        print(f"width {width:g} ({r['params']:,} params): train {r['train_accuracy']:.3f}, "
              f"test {r['test_accuracy']:.3f} ({r['seconds']:.0f}s)", flush=True)
    print(json.dumps({"pair": FLAGS.pair, "per_class": FLAGS.per_class, "epochs": FLAGS.epochs,
                      "image_size": FLAGS.image_size, "difficulty": json.loads(FLAGS.difficulty),
                      "widths": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

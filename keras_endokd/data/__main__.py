"""python -m keras_endokd.data describe|synth: inspect a dataset, or write the synthetic one.

    python -m keras_endokd.data describe --dataset=NAME [--data_dir=DIR] [--split_file=F] [--fold=K]
        prints class names and image counts per split and class, as JSON.
    python -m keras_endokd.data synth --out=DIR [--per_class=N --image_size=S --seed=K] [--grid=PNG]
        writes the embedded synthetic dataset as JPEGs in the Kvasir-v2 layout
        (DIR/kvasir-dataset-v2/<class>/*.jpg), and optionally a labelled sample grid.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from keras_endokd.cli import fail  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "kvasir_v2", "hyper_kvasir", "folder"], "Dataset to describe.")
flags.DEFINE_string("data_dir", None, "Dataset folder (real datasets).")
flags.DEFINE_string("split_file", None, "Hyper-Kvasir official split CSV.")
flags.DEFINE_integer("fold", 0, "Held-out test fold of k-fold datasets.")
flags.DEFINE_integer("seed", 0, "Seed of the splits and of the synthetic images.")
flags.DEFINE_string("out", None, "synth: output folder.")
flags.DEFINE_integer("per_class", 100, "synth: images per class.")
flags.DEFINE_integer("image_size", 256, "synth: square image size in pixels (describe: synthetic size).")
flags.DEFINE_string("grid", None, "synth: also write a labelled sample-grid PNG here.")

COMMANDS = ("describe", "synth")


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"Expected one command, {' or '.join(COMMANDS)}; got {argv[1:]}.")
    from keras_endokd.data import DatasetLayoutError, load_dataset

    try:
        if argv[1] == "describe":
            if FLAGS.dataset == "synthetic":  # counts from the generator's split sizes, no pixels
                from keras_endokd.data import synthetic

                summary = synthetic.describe(FLAGS.image_size, FLAGS.seed)
            else:  # describe what is there, also when a class lacks a split (listed, and a warning)
                summary = load_dataset(FLAGS.dataset, FLAGS.data_dir, FLAGS.split_file, FLAGS.fold,
                                       FLAGS.seed, FLAGS.image_size, check_splits=False).describe()
            print(json.dumps(summary, indent=2))
            return 0
        if not FLAGS.out:
            raise ValueError("synth needs --out=DIR, the folder to write the dataset into.")
        if FLAGS.per_class < 1 or not 16 <= FLAGS.image_size <= 2048:
            raise ValueError(f"--per_class must be >= 1 and --image_size in [16, 2048]; got "
                             f"{FLAGS.per_class} and {FLAGS.image_size}.")
        from keras_endokd.data import synthetic

        root = synthetic.write_folder(FLAGS.out, FLAGS.per_class, FLAGS.image_size, FLAGS.seed)
        print(f"wrote {FLAGS.per_class} images per class to {root}")
        if FLAGS.grid:
            print(f"wrote {synthetic.sample_grid(FLAGS.grid, image_size=min(FLAGS.image_size, 160), seed=FLAGS.seed)}")
    except (ValueError, DatasetLayoutError, FileNotFoundError) as err:
        return fail(err)
    return 0


if __name__ == "__main__":
    from keras_endokd.console import quiet_native_logs

    quiet_native_logs()  # before absl parses the flags and anything imports TensorFlow
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in sys.argv[1:]):
        print(__doc__ + "\n" + FLAGS.main_module_help())  # absl's --help exits 1: a request is no error
        sys.exit(0)
    app.run(main)

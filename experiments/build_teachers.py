"""python -m experiments.build_teachers: (re)build the teachers shipped inside the package.

The embedded data's default teachers (`keras_endokd.models.teachers.DEFAULT_TEACHERS`) ship in
`keras_endokd/models/pretrained/` as `<name>-<key>.keras` with a `.json` beside each (settings,
parameters, test accuracy), keyed like `distill.teacher_store.TeacherStore`: by the synthetic
data's pixels and the teacher settings of the train command's defaults. A test fails when the
generator or those settings change without a rebuild: run this, then commit the new files.

    python -m experiments.build_teachers [--teacher_dir=runs/teachers]

Teachers already trained in `--teacher_dir` under the same key are copied, not retrained; any
other file in the shipped folder is removed.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from keras_endokd.cli import parse_flags  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_string("teacher_dir", "runs/teachers", "Where the teachers are trained (or found).",
                    flag_values=FLAGS)


def main(argv=None) -> int:
    _, code = parse_flags(FLAGS, argv, __doc__)
    if code is not None:
        return code
    import dataclasses

    from keras_endokd import atomic_files
    from keras_endokd.data import load_dataset
    from keras_endokd.distill.teacher_store import SHIPPED_DIR
    from keras_endokd.run_config import RunConfig, log, make_datasets
    from keras_endokd.teacher_stage import obtain_teachers

    cfg = dataclasses.replace(RunConfig(), teacher_dir=FLAGS.teacher_dir, shipped_teachers=False)
    source = load_dataset(cfg.dataset, cfg.data_dir, cfg.split_file, cfg.fold, cfg.resolved_data_seed(),
                          cfg.image_size)
    _, infos = obtain_teachers(cfg, source, make_datasets(cfg, source))
    os.makedirs(SHIPPED_DIR, exist_ok=True)
    keep = set()
    for info in infos:
        stem = f"{info['name']}-{info['key']}"
        with open(info["path"], "rb") as f:
            atomic_files.write_bytes(os.path.join(SHIPPED_DIR, stem + ".keras"), f.read())
        shipped = {k: v for k, v in info.items() if k not in ("path", "shipped")}
        atomic_files.write_json(os.path.join(SHIPPED_DIR, stem + ".json"), shipped)
        keep |= {stem + ".keras", stem + ".json"}
    for name in sorted(set(os.listdir(SHIPPED_DIR)) - keep):
        os.remove(os.path.join(SHIPPED_DIR, name))
    for info in infos:
        log(f"shipped {info['name']}-{info['key']}: test accuracy {info['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

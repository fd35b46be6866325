"""How an export replaces the deployment files of a run folder: the whole set, or nothing.

The deployment files must always belong together: a `.tflite` model beside a C array of another
model, or a report that says `failed` beside models of an earlier export, misleads whoever deploys
them. So an export writes its files into a staging folder inside the run folder (one file system:
each move is a rename), and only once every check has passed does `publish` move them in:

1. the previous `export_report.json` and `export_failed.json` go first, so that an interrupted
   move leaves no report claiming a complete set;
2. deployment files of an earlier export that the new set lacks go (`student_pruned.keras` after
   an export with --sparsity=0);
3. the new files are moved in, `export_report.json` last.

A failed export leaves the previous complete set untouched, writes its report with the error to
`export_failed.json`, and removes its staging folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from keras_endokd import atomic_files

REPORT = "export_report.json"
FAILED_REPORT = "export_failed.json"
DEPLOYMENT_FILES = (
    "student_pruned.keras", "student_float32.tflite", "student_int8.tflite",
    "student_android.tflite", "labels.txt", "model_data.cc", "model_data.h",
    "micro_op_resolver.h", "model_card.json", "reliability_diagram_float32.png",
    "reliability_diagram_int8.png", "reliability_diagram_android.png", REPORT,
)
_STAGING_PREFIX = ".export-staging-"


def staging_folder(run_dir: str) -> str:
    """A new empty folder inside `run_dir` for the export's files; earlier ones are removed
    (left by an export that was killed)."""
    os.makedirs(run_dir, exist_ok=True)
    for name in os.listdir(run_dir):
        if name.startswith(_STAGING_PREFIX):
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=run_dir)


def publish(staging: str, run_dir: str) -> list:
    """Moves the complete set from `staging` into `run_dir` (see module docstring); returns the
    names moved in."""
    names = sorted(os.listdir(staging))
    unknown = set(names) - set(DEPLOYMENT_FILES)
    if unknown or REPORT not in names:
        raise RuntimeError(f"staging folder {staging} holds {names}: expected deployment files "
                           f"and {REPORT}")
    for name in (REPORT, FAILED_REPORT, *(n for n in DEPLOYMENT_FILES if n not in names)):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            os.remove(path)
    for name in [n for n in names if n != REPORT] + [REPORT]:
        os.replace(os.path.join(staging, name), os.path.join(run_dir, name))
    os.rmdir(staging)
    return names


def record_failure(staging: str, run_dir: str, report: dict) -> str:
    """Writes `report` to `run_dir`/export_failed.json, removes `staging`; returns the path.
    The previous export's files stay as they were."""
    shutil.rmtree(staging, ignore_errors=True)
    return atomic_files.write_json(os.path.join(run_dir, FAILED_REPORT), report)

"""A run folder's life: claimed once, continued with --resume, replaced only with --overwrite.

A long run on a clinic's machine must survive a crash and must never clobber an earlier run by
accident. So `claim` refuses a folder that holds another run unless the user says what to do with
it: `--overwrite` (the old run's outputs are removed first, so no stale file from it survives next
to the new ones) or `--resume` (same settings required: a resumed run that silently changed its
flags would be neither run). The training checkpoint that `--resume` continues from lives in
`backup/` (Keras `BackupAndRestore`); it is deleted only after `student.keras` is written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Optional

import keras

BACKUP = "backup"
# Everything a run writes (pipeline.py, student_stage.py and deploy); used to recognise and to clear a run.
RUN_OUTPUTS = (
    "config.json", "history.csv", "logs", "student.keras", "metrics.json", "confusion_matrix.png",
    BACKUP, "student_int8.tflite", "student_android.tflite", "student_float32.tflite", "labels.txt",
    "model_card.json", "model_data.cc", "model_data.h", "micro_op_resolver.h", "export_report.json",
    "student_pruned.keras", "report.html", "reliability_diagram.png", "reliability_diagram_calibrated.png",
    "roc_pr_curves.png", "explanations.png", "export_failed.json", "reliability_diagram_float32.png",
    "reliability_diagram_int8.png", "reliability_diagram_android.png",
)
# Settings that say how a run is invoked, not what it computes: they may differ on --resume.
INVOCATION_KEYS = ("resume", "overwrite", "verbose", "export", "report")


class RunFolderError(ValueError):
    """The output folder cannot be used as asked (names the folder and the way out)."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


def existing_outputs(run_dir: str) -> list:
    if not os.path.isdir(run_dir):
        return []
    return [name for name in RUN_OUTPUTS if os.path.exists(os.path.join(run_dir, name))]


def claim(run_dir: str, config: dict, overwrite: bool = False, resume: bool = False,
          defaults: Optional[dict] = None) -> None:
    """Checks `run_dir` may be written with `config`; clears an old run when `overwrite`.

    `defaults`: the value of each setting a stored run predates (see `changed_settings`)."""
    if overwrite and resume:
        raise RunFolderError("--overwrite and --resume contradict each other: pick one.")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunFolderError(f"--output_dir={run_dir} is a file, not a folder.")
    found = existing_outputs(run_dir)
    if resume:
        _check_resumable(run_dir, config, defaults)
        return
    if not found:
        return
    if not overwrite:
        raise RunFolderError(
            f"--output_dir={run_dir} already holds a run ({_listing(found)}). Pass --resume to "
            "continue it, --overwrite to replace it, or choose another --output_dir."
        )
    for name in found:
        path = os.path.join(run_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def state(run_dir: str, config: dict, defaults: Optional[dict] = None) -> str:
    """What `run_dir` holds for a run with `config`, for callers that run many configs:

    "finished" (same settings, metrics.json written: reuse it), "interrupted" (same settings, no
    metrics.json: continue it with resume=True), "other" (another run or stray outputs: replace
    it with overwrite=True) or "empty".
    """
    if changed_settings(run_dir, config, defaults) == []:
        return "finished" if os.path.isfile(os.path.join(run_dir, "metrics.json")) else "interrupted"
    return "other" if existing_outputs(run_dir) else "empty"


def _listing(names, shown: int = 4) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def changed_settings(run_dir: str, config: dict, defaults: Optional[dict] = None) -> Optional[list]:
    """The settings in which `config` differs from the run stored in `run_dir` (its config.json),
    ignoring how each was invoked; None when no run is stored there.

    A setting missing from the stored run (added to the package since) counts as its value in
    `defaults`: the value that run had in effect, so an upgrade alone changes nothing.
    """
    stored = _stored_config(run_dir, defaults)
    if stored is None:
        return None
    config = json.loads(json.dumps(config))  # as stored: tuples become lists
    return sorted(key for key in set(stored) | set(config)
                  if key not in INVOCATION_KEYS and stored.get(key) != config.get(key))


def _stored_config(run_dir: str, defaults: Optional[dict]) -> Optional[dict]:
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return {**json.loads(json.dumps(defaults or {})), **upgraded(json.load(f))}


def upgraded(stored: dict) -> dict:
    """A stored config.json with renamed settings under their current names, in place.

    `ce_weight` a (objective a * CE + terms) is proportional to `student_loss_weight` w = a / (1 + a)
    (objective w * CE + (1 - w) * terms)."""
    if "ce_weight" in stored:
        a = stored.pop("ce_weight")
        stored.setdefault("student_loss_weight", a / (1.0 + a))
    return stored


def _check_resumable(run_dir: str, config: dict, defaults: Optional[dict]) -> None:
    changed = changed_settings(run_dir, config, defaults)
    if changed is None:
        raise RunFolderError(f"--resume: {run_dir} holds no run to continue (no config.json).")
    if changed:
        stored = _stored_config(run_dir, defaults)
        details = "; ".join(f"--{k}: {stored.get(k)!r} then, {config.get(k)!r} now" for k in changed)
        raise RunFolderError(
            f"--resume: the run in {run_dir} was started with other settings ({details}). Resume "
            "with the same flags, or start a new run (--overwrite or another --output_dir)."
        )


def backup_dir(run_dir: str) -> str:
    return os.path.join(run_dir, BACKUP)


def completed_epochs(run_dir: str) -> int:
    """Epochs the run's checkpoint holds (0 when there is none)."""
    try:
        with open(os.path.join(backup_dir(run_dir), "training_metadata.json")) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def clear_backup(run_dir: str) -> None:
    shutil.rmtree(backup_dir(run_dir), ignore_errors=True)


def checkpoint_callbacks(checkpoint_dir: str) -> list:
    """Checkpoint every epoch into `checkpoint_dir` (training continues from it), and stop on a
    non-finite loss. The loss guard comes first: it raises before `BackupAndRestore` can
    checkpoint NaN weights at the end of the epoch, so the checkpoint keeps the last good epoch.
    """
    return [
        StopOnNonFiniteLoss(checkpoint_dir),
        keras.callbacks.BackupAndRestore(checkpoint_dir, double_checkpoint=True, delete_checkpoint=False),
    ]


def training_callbacks(run_dir: str, resume: bool) -> list:
    """The student's: checkpoints in `backup/`, the NaN stop, CSV and TensorBoard logs."""
    return [
        *checkpoint_callbacks(backup_dir(run_dir)),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=resume),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False),
    ]


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `NonFiniteLossError` at the first batch whose loss is NaN or infinite, or at the end
    of an epoch whose validation loss is.

    Keras' `TerminateOnNaN` only sets `stop_training`: the epoch still ends, `BackupAndRestore`
    then saves the NaN weights over the last good ones, and the run writes a broken student.
    Raising stops everything at once and keeps the checkpoint of the last completed epoch.
    """

    def __init__(self, checkpoint_dir: str):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _kept(self, completed: int) -> str:
        """What the checkpoint holds after `completed` epochs, for the error message."""
        return (f"the weights of the last completed epoch ({completed}) are kept in {self.checkpoint_dir}"
                if completed else "no epoch had completed")

    def on_epoch_end(self, epoch, logs=None):
        # A training loss can stay finite while the weights or BatchNorm statistics overflow
        # (inference gives NaN): the validation loss, computed in inference mode, shows it.
        loss = (logs or {}).get("val_loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"the validation loss became {float(loss)} at epoch {epoch + 1} (the training loss "
                f"{float(logs.get('loss', float('nan'))):.3g}): the model diverged; {self._kept(epoch)}. Lower "
                "--learning_rate (or a loss weight) and start again."
            )

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            kept = self._kept(self.epoch)
            raise NonFiniteLossError(
                f"the training loss became {float(loss)} at epoch {self.epoch + 1}, batch {batch + 1}; "
                f"{kept}. Lower --learning_rate (or a loss weight) and start again, or, if the "
                "data or settings were not the cause, continue with --resume."
            )

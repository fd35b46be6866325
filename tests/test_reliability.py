"""Crash safety, run folders, NaN stops, determinism and tf.distribute: the reliability contract."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_endokd import run_folder
from keras_endokd.run_folder import NonFiniteLossError, RunFolderError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--image_size=32", "--teacher_epochs=1", "--teachers=tiny_resnet", "--teacher_views=2",
        "--min_agreement=0"]
RUN_FILES = (
    "config.json", "student.keras", "history.csv", "logs", "metrics.json", "confusion_matrix.png",
    "student_int8.tflite", "student_android.tflite", "student_float32.tflite", "labels.txt",
    "model_card.json", "model_data.cc", "model_data.h", "micro_op_resolver.h", "export_report.json",
)


def _env(**extra):
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO, **extra}


def _train(*flags, **popen):
    return subprocess.Popen([sys.executable, "-m", "keras_endokd.train", *flags], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


# --- run folders -------------------------------------------------------------------------------

def test_a_folder_holding_a_run_is_refused_then_overwritten_only_when_asked(tmp_path):
    run_folder.claim(str(tmp_path), {"kd": "none"})  # empty folder: fine
    for name in ("config.json", "student.keras", "student_int8.tflite"):
        (tmp_path / name).write_text("old")
    (tmp_path / "notes.txt").write_text("the user's")
    with pytest.raises(RunFolderError, match="already holds a run .*--overwrite"):
        run_folder.claim(str(tmp_path), {"kd": "none"})
    assert (tmp_path / "student.keras").read_text() == "old"
    run_folder.claim(str(tmp_path), {"kd": "none"}, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]  # the old run's outputs only


def test_resume_needs_a_run_with_the_same_settings(tmp_path):
    with pytest.raises(RunFolderError, match="no run to continue"):
        run_folder.claim(str(tmp_path), {"kd": "none"}, resume=True)
    (tmp_path / "config.json").write_text(json.dumps({"kd": "none", "epochs": 20, "teachers": ["a"],
                                                      "verbose": 2}))
    run_folder.claim(str(tmp_path), {"kd": "none", "epochs": 20, "teachers": ("a",), "verbose": 0}, resume=True)
    with pytest.raises(RunFolderError, match="--epochs: 20 then, 30 now"):
        run_folder.claim(str(tmp_path), {"kd": "none", "epochs": 30, "teachers": ("a",)}, resume=True)
    # A setting added since the run was stored counts as its default, the value the run had.
    newer = {"kd": "none", "epochs": 20, "teachers": ("a",), "per_tensor": False}
    run_folder.claim(str(tmp_path), newer, resume=True, defaults={"per_tensor": False, "epochs": 5})
    with pytest.raises(RunFolderError, match="--per_tensor: False then, True now"):
        run_folder.claim(str(tmp_path), {**newer, "per_tensor": True}, resume=True,
                         defaults={"per_tensor": False})
    with pytest.raises(RunFolderError, match="--per_tensor: None then, False now"):
        run_folder.claim(str(tmp_path), newer, resume=True)
    with pytest.raises(RunFolderError, match="contradict"):
        run_folder.claim(str(tmp_path), {}, resume=True, overwrite=True)


def test_a_run_stored_with_the_legacy_ce_weight_resumes_as_its_student_loss_weight(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"kd": "none", "ce_weight": 1.0}))
    assert run_folder.changed_settings(str(tmp_path), {"kd": "none", "student_loss_weight": 0.5}) == []
    assert run_folder.changed_settings(str(tmp_path), {"kd": "none", "student_loss_weight": 0.8}) == [
        "student_loss_weight"]


# --- NaN ---------------------------------------------------------------------------------------

def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((16, 4), "float32"), np.zeros((16, 2), "float32")
    good = {}

    def poison(epoch, logs=None):  # epoch 3 (index 2) turns the weights to NaN
        if epoch == 2:
            good["weights"] = [w.copy() for w in model.get_weights()]  # = the end of epoch 2
            model.layers[0].kernel.assign(np.full((4, 2), np.nan, "float32"))

    callbacks = [keras.callbacks.LambdaCallback(on_epoch_begin=poison),
                 *run_folder.checkpoint_callbacks(run_folder.backup_dir(str(tmp_path)))]
    with pytest.raises(NonFiniteLossError, match="epoch 3, batch 1.*completed epoch \\(2\\)"):
        model.fit(x, y, batch_size=8, epochs=5, callbacks=callbacks, verbose=0)
    assert run_folder.completed_epochs(str(tmp_path)) == 2
    model.load_weights(os.path.join(run_folder.backup_dir(str(tmp_path)), "latest.weights.h5"))
    restored = model.get_weights()
    assert all(np.isfinite(w).all() for w in restored)
    assert all(np.array_equal(a, b) for a, b in zip(restored, good["weights"]))


@pytest.mark.slow
def test_the_train_command_reports_a_diverging_loss(tmp_path, capsys):
    """The command's own `main`, in this process (no TensorFlow start-up of its own); without op
    determinism, which would stay switched on for the tests that follow."""
    from keras_endokd import train

    code = train.main(["train", "--kd=none", "--image_size=32", "--epochs=2", "--learning_rate=1e30",
                       "--nodeterministic", f"--output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    # the training loss (or, where it stays finite, the validation loss) became non-finite
    assert "loss became" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "student.keras").exists()


# --- kill and resume ---------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_and_ends_with_every_output(tmp_path, capsys):
    """Also the train command's end-to-end test: every file of a run folder, and teacher reuse."""
    out = tmp_path / "run"
    # --sparsity=0: the export runs whole but skips pruning's fine-tuning (test_export prunes).
    flags = ["--kd=response,relation", "--heads=2", "--epochs=6", "--sparsity=0", f"--output_dir={out}", *TINY]
    proc = _train(*flags, start_new_session=True)
    metadata = out / "backup" / "training_metadata.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(metadata.read_text())["epoch"] >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "student.keras").exists()

    # Never silently over a killed run (asked in this process: refused before any training).
    from keras_endokd import train

    assert train.main(["train", *flags, "--nodeterministic"]) == 2
    assert "--resume" in capsys.readouterr().err

    resumed = _train(*flags, "--resume")
    stdout, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert "resume: continuing from epoch" in stdout
    assert "reused" in stdout and "trained in" not in stdout.split("student")[0]  # the stored teacher
    for name in RUN_FILES:
        assert (out / name).exists(), name
    assert not (out / "backup").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["student"]["params"] == 51_640  # 8 classes; the count does not depend on image size
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "mcc", "per_class", "confusion_matrix"):
        assert key in metrics["student"]
    assert [t["name"] for t in metrics["teachers"]] == ["tiny_resnet"]
    config = json.loads((out / "config.json").read_text())
    assert config["kd"] == "response,relation" and config["image_size"] == 32
    header = (out / "history.csv").read_text().splitlines()[0]
    assert "loss_response" in header and "loss_relation" in header
    epochs = [int(line.split(",")[0]) for line in (out / "history.csv").read_text().splitlines()[1:]]
    assert epochs[-1] == 5 and sorted(set(epochs)) == list(range(6))
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no half-written temp files


# --- determinism -------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_same_seed_and_flags_give_the_same_metrics(tmp_path):
    """Two processes, nothing shared (separate teacher folders): teachers and student agree exactly."""
    runs = [_train("--kd=response,relation", "--heads=2", "--epochs=2", "--noexport",
                   f"--output_dir={tmp_path / str(i) / 'run'}", *TINY) for i in range(2)]
    for proc in runs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    first, second = (json.loads((tmp_path / str(i) / "run" / "metrics.json").read_text()) for i in range(2))
    assert first["student"]["confusion_matrix"] == second["student"]["confusion_matrix"]
    assert first["teachers"][0]["test_accuracy"] == second["teachers"][0]["test_accuracy"]
    histories = [(tmp_path / str(i) / "run" / "history.csv").read_text() for i in range(2)]
    assert histories[0] == histories[1]


# --- tf.distribute -----------------------------------------------------------------------------

def test_mirrored_on_two_cpu_devices_takes_the_same_step_as_one_device():
    result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "distribute_check.py")],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    for path in ("live", "cached"):
        step = report[path]
        assert step["max_step"] > 0.1  # the step is large ...
        assert step["max_weight_difference"] < 1e-4  # ... and the same on 2 replicas
        assert step["loss_mirrored"] == pytest.approx(step["loss_single"], rel=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multi_worker_trains_with_two_local_workers(tmp_path):
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    out = tmp_path / "run"
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "keras_endokd.train", "--strategy=multi_worker", "--kd=response,relation",
             "--heads=2", "--epochs=2", "--noexport", f"--output_dir={out}", *TINY],
            cwd=REPO, env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (stdout, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
        assert "2 replicas in sync" in stdout
    assert "scratch" in outputs[1][0]  # worker 1 computes, only the chief writes the run folder
    metrics = json.loads((out / "metrics.json").read_text())
    # The chief's reported accuracy is the saved student's, evaluated here on one device: the
    # predictions were not shuffled by the workers' sharding.
    from keras_endokd.data import load_dataset
    from keras_endokd.data.tf_datasets import make_dataset

    source = load_dataset("synthetic", image_size=32)
    student = keras.saving.load_model(out / "student.keras", safe_mode=True)
    predictions = np.argmax(student.predict(make_dataset(source.splits["test"], 32, 64), verbose=0), -1)
    assert metrics["student"]["accuracy"] == pytest.approx(np.mean(predictions == source.splits["test"].labels))
    assert metrics["student"]["accuracy"] > 0.2  # chance is 0.125


# --- bad images, end to end --------------------------------------------------------------------

def _folder_with_a_corrupt_jpeg(root):
    from PIL import Image

    rng = np.random.RandomState(0)
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(rng.normal(60 + 120 * c, 30, (40, 48, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i:02d}.jpg")
    broken = root / "class1" / "05.jpg"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated mid-scan, as a failed copy leaves it
    return broken


def test_a_corrupt_image_is_fatal_before_training_with_on_bad_image_error(tmp_path):
    broken = _folder_with_a_corrupt_jpeg(tmp_path / "data")
    proc = _train("--dataset=folder", f"--data_dir={tmp_path / 'data'}", "--kd=none", "--on_bad_image=error",
                  f"--output_dir={tmp_path / 'run'}", "--image_size=32")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "Traceback" not in err
    assert str(broken) in err and "--on_bad_image=skip" in err
    assert not (tmp_path / "run" / "history.csv").exists()  # stopped before any training


@pytest.mark.slow
def test_a_corrupt_image_is_skipped_and_listed_in_the_run_report(tmp_path):
    broken = _folder_with_a_corrupt_jpeg(tmp_path / "data")
    proc = _train("--dataset=folder", f"--data_dir={tmp_path / 'data'}", "--kd=none", "--epochs=1",
                  "--noexport", f"--output_dir={tmp_path / 'run'}", "--image_size=32")
    stdout, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "1 files left out" in stdout
    skipped = json.loads((tmp_path / "run" / "metrics.json").read_text())["dataset"]["skipped"]
    assert [s["path"] for s in skipped] == [str(broken)] and "unreadable" in skipped[0]["reason"]


# --- safe loading ------------------------------------------------------------------------------

def test_a_model_file_with_python_code_is_refused(tmp_path, capsys):
    """A .keras file can carry a Lambda layer's bytecode; safe_mode refuses to deserialize it."""
    from keras_endokd.models.teachers import load_teacher

    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    path = str(tmp_path / "lambda.keras")
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ValueError, match="safe_mode"):
        load_teacher(path, num_classes=8, image_size=32)
    # The predict command, in this process (its exit code and its message, no traceback).
    from keras_endokd import predict

    assert predict.main(["predict", f"--model={path}", path]) == 2
    err = capsys.readouterr().err
    assert "safe_mode" in err and "Traceback" not in err

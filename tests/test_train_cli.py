"""The train command end to end on tiny images: every file of a run folder, and flag errors."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FILES = (
    "config.json", "student.keras", "history.csv", "logs", "metrics.json", "confusion_matrix.png",
    "student_int8.tflite", "student_android.tflite", "student_float32.tflite", "labels.txt",
    "model_card.json", "model_data.cc", "model_data.h", "export_report.json",
)
TINY = ["--image_size=32", "--epochs=1", "--teacher_epochs=1", "--teachers=tiny_resnet,tiny_resnet",
        "--heads=2", "--teacher_views=2", "--min_agreement=0"]


def _train(tmp_path, *flags):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "keras_endokd.train", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_train_writes_every_file_and_reuses_teachers(tmp_path):
    out = tmp_path / "run"
    first = _train(tmp_path, "--kd=response,relation", f"--output_dir={out}", *TINY)
    assert first.returncode == 0, first.stderr[-3000:]
    for name in RUN_FILES:
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    student = metrics["student"]
    assert student["params"] == 51_640  # 8 classes; the count does not depend on image size
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "mcc", "per_class", "confusion_matrix"):
        assert key in student
    assert [t["name"] for t in metrics["teachers"]] == ["tiny_resnet", "tiny_resnet"]
    history = (out / "history.csv").read_text().splitlines()[0]
    assert "loss_response" in history and "loss_relation" in history
    config = json.loads((out / "config.json").read_text())
    assert config["kd"] == "response,relation" and config["image_size"] == 32
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temp files left behind

    second = _train(tmp_path, "--kd=response", f"--output_dir={tmp_path / 'run2'}", "--noexport", *TINY)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reused" in second.stdout and "trained in" not in second.stdout.split("student")[0]


@pytest.mark.parametrize("flag, message", [
    ("--kd=crd", "Unknown --kd"),
    ("--teachers=resnet9000", "unknown teacher"),
    ("--image_size=8", "impossible"),
    ("--sparsity=1.5", "outside [0, 1)"),
    ("--teachers=missing.keras", "does not exist"),
])
def test_bad_flags_get_a_one_paragraph_error(tmp_path, flag, message):
    result = _train(tmp_path, flag, f"--output_dir={tmp_path / 'bad'}")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr

"""python -m keras_endokd.data describe|synth, as a user runs them."""

import json
import os
import subprocess
import sys

from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data(*args, python_options=()):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, *python_options, "-m", "keras_endokd.data", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def test_synth_then_describe_the_written_folder_as_kvasir(tmp_path):
    result = _data("synth", f"--out={tmp_path}", "--per_class=3", "--image_size=48", f"--grid={tmp_path / 'grid.png'}")
    assert result.returncode == 0, result.stderr[-2000:]
    root = tmp_path / "kvasir-dataset-v2"
    assert len(os.listdir(root)) == 8
    assert Image.open(next((root / "polyps").iterdir())).size == (48, 48)
    assert (tmp_path / "grid.png").stat().st_size > 1000

    described = _data("describe", "--dataset=kvasir_v2", f"--data_dir={tmp_path}")
    assert described.returncode == 0, described.stderr[-2000:]
    info = json.loads(described.stdout)
    assert info["num_classes"] == 8
    assert sum(s["total"] for s in info["splits"].values()) == 24
    # 3 images per class over 2 folds leave some classes no validation image: listed, not fatal.
    missing = info["classes_missing_from_a_split"]
    assert missing and {m["split"] for m in missing} == {"val"}


def test_describe_the_embedded_dataset_and_bad_commands():
    info = json.loads(_data("describe", "--image_size=32").stdout)
    assert info["dataset"] == "synthetic"
    assert info["splits"]["train"]["per_class"]["esophagitis"] == 160
    missing = _data("describe", "--dataset=kvasir_v2")
    assert missing.returncode == 2 and "--data_dir" in missing.stderr and "Traceback" not in missing.stderr
    assert _data("synth").returncode == 2


def test_the_data_commands_run_without_tensorflow():
    """The package imports its public names lazily: describing the embedded data never loads
    TensorFlow (whose start-up is most of a CLI's time on 2 cores)."""
    result = _data("describe", "--image_size=32", python_options=("-X", "importtime"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["num_classes"] == 8
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "keras_endokd.data.synthetic" in imported and "tensorflow" not in imported


def test_help_is_a_request_not_an_error():
    result = _data("--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "describe|synth" in result.stdout and "--per_class" in result.stdout

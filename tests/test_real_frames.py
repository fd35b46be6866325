"""Real Hyper-Kvasir frames (../shared/data/real-frames, 72 images in 3 classes): what synthetic
data cannot show. The folder loader and --crop_border on real frames, predict on them, and a
short real-data run that trains, evaluates and exports. Skipped when ../shared is absent."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import SHARED

REAL = SHARED / "data" / "real-frames"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("normal-cecum", "polyps", "ulcerative-colitis")
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} is absent (the real frames live outside the repository)")


def _frames():
    return sorted(str(p) for c in CLASSES for p in (REAL / c).iterdir() if p.suffix == ".jpg")


def test_the_folder_loader_reads_every_real_frame_into_every_split():
    from keras_endokd.data import load_dataset

    source = load_dataset("folder", data_dir=str(REAL))
    assert source.class_names == CLASSES
    assert sum(len(s) for s in source.splits.values()) == 72 and all(p.endswith("README.md") for p, _ in source.skipped)
    assert source.empty_classes() == []
    counts = np.bincount(np.concatenate([s.labels for s in source.splits.values()]))
    assert counts.tolist() == [50, 12, 10]


def test_crop_border_keeps_the_field_of_view_of_real_frames_and_removes_added_black():
    """Hyper-Kvasir frames are cut close to the field stop (only the octagon's corners are black):
    the crop must keep them whole. The same frame on a wider black surround, as a 1920x1072
    recorder frame shows it, must come back to (nearly) the same pixels."""
    import tensorflow as tf

    from keras_endokd.data.tf_datasets import crop_black_border, decode_image, preprocess_image

    for path in _frames()[::9]:
        frame = decode_image(tf.io.read_file(path)).numpy()
        h, w, _ = frame.shape
        kept = crop_black_border(frame).shape
        assert kept[0] * kept[1] >= 0.85 * h * w, (path, kept, frame.shape)  # the field of view stays
        cropped = preprocess_image(frame, 128, True).numpy().astype(np.float32)
        surround = np.zeros((h + 60, w + 200, 3), np.uint8)
        surround[20:20 + h, 150:150 + w] = frame
        surround[30:40, 10:90] = 255  # on-screen text on the black border
        assert np.abs(preprocess_image(surround, 128, False).numpy() - cropped).mean() > 20.0
        assert np.abs(preprocess_image(surround, 128, True).numpy() - cropped).mean() < 2.0, path


def test_predict_on_real_frames_with_the_synthetic_demo_model_says_so(tmp_path, capsys):
    from keras_endokd import predict
    from keras_endokd.models.student import build_student

    build_student(8, 64).save(tmp_path / "student.keras")
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "synthetic", "crop_border": False}))
    frames = _frames()[::12]
    code = predict.main(["predict", f"--model={tmp_path / 'student.keras'}", "--top_k=8", *frames])
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert code == 0 and [l["image"] for l in lines] == frames
    for line in lines:
        assert sum(p["probability"] for p in line["top8"]) == pytest.approx(1.0, abs=1e-4)
        assert line["caution"] == predict.SYNTHETIC_CAUTION
        assert "warnings" not in line  # real frames are not degenerate inputs


@pytest.mark.slow
def test_a_short_real_data_run_trains_evaluates_and_exports(tmp_path):
    """Default export checks (no --min_agreement): a 72-image dataset still gets its .tflite
    files. In a subprocess, so that op determinism (the default) stays in that run."""
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "keras_endokd.train", "--dataset=folder", f"--data_dir={REAL}", "--crop_border",
         "--image_size=64", "--kd=none", "--epochs=30", "--batch_size=8", f"--output_dir={run}"],
        cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO},
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"]["class_names"] == list(CLASSES)
    assert metrics["student"]["confusion_matrix"] and len(metrics["student"]["per_class"]) == 3
    # 8 validation frames are too few to fit a temperature: it stays 1, and the run says so.
    assert metrics["calibration"]["temperature"] == 1.0 and "not fitted" in metrics["calibration"]["fitted_on"]
    for name in ("student.keras", "student_android.tflite", "student_int8.tflite", "model_data.cc", "report.html"):
        assert (run / name).is_file(), name
    report = json.loads((run / "export_report.json").read_text())
    assert report["status"] == "ok" and report["agreement_check"]["images"] == 72
    assert json.loads((run / "config.json").read_text())["crop_border"] is True

"""predict on poor inputs and with a demonstration model: warnings and cautions in the JSON lines."""

import json

import numpy as np
import pytest
from PIL import Image

from keras_endokd import predict
from keras_endokd.models.student import build_student


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    build_student(3, 32).save(folder / "student.keras")
    (folder / "labels.txt").write_text("a\nb\nc\n")
    return folder


def _images(folder):
    rng = np.random.default_rng(0)
    paths = {"tiny": folder / "tiny.png", "constant": folder / "constant.png", "good": folder / "good.png"}
    Image.new("RGB", (1, 1), (200, 80, 60)).save(paths["tiny"])
    Image.new("RGB", (64, 64), (120, 40, 40)).save(paths["constant"])
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths["good"])
    return paths


def _lines(capsys, model, images):
    code = predict.main(["predict", f"--model={model}", *map(str, images)])
    out = capsys.readouterr()
    return code, [json.loads(line) for line in out.out.splitlines()], out.err


def test_degenerate_inputs_carry_a_warning_and_a_normal_one_none(model_dir, tmp_path, capsys):
    paths = _images(tmp_path)
    code, lines, _ = _lines(capsys, model_dir / "student.keras", paths.values())
    assert code == 0
    by_name = {l["image"]: l for l in lines}
    tiny, constant, good = (by_name[str(paths[k])] for k in ("tiny", "constant", "good"))
    assert any(w.startswith("tiny image (1x1 pixels)") for w in tiny["warnings"])
    assert any(w.startswith("constant image") for w in tiny["warnings"])  # one pixel is constant too
    assert [w for w in constant["warnings"] if w.startswith("constant image")] and len(constant["warnings"]) == 1
    assert "warnings" not in good and "top3" in good
    assert all("caution" not in l for l in lines)  # nothing says this model saw synthetic data


def test_a_model_trained_on_synthetic_data_says_so_on_every_line(model_dir, tmp_path, capsys):
    (model_dir / "config.json").write_text(json.dumps({"dataset": "synthetic"}))
    try:
        code, lines, err = _lines(capsys, model_dir / "student.keras", _images(tmp_path).values())
    finally:
        (model_dir / "config.json").unlink()
    assert code == 0 and len(lines) == 3
    assert all(l["caution"] == predict.SYNTHETIC_CAUTION for l in lines)
    assert "caution: this model was trained on keras-endokd's synthetic images" in err


def test_input_warnings_thresholds():
    flat = np.full((100, 100, 3), 90, np.uint8)
    assert predict.input_warnings(flat, 128) == [predict.input_warnings(flat, 128)[0]]
    textured = np.random.default_rng(1).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    assert predict.input_warnings(textured, 128) == []
    assert predict.input_warnings(textured[:15, :15], 128)[0].startswith("tiny image (15x15")


def test_every_line_carries_an_ood_score_flagged_against_the_run_threshold(model_dir, tmp_path, capsys):
    paths = _images(tmp_path)
    code, lines, _ = _lines(capsys, model_dir / "student.keras", paths.values())
    assert code == 0 and all(l["ood"]["threshold"] is None and l["ood"]["flagged"] is None for l in lines)
    for line in lines:  # MSP: the top-1 probability
        assert line["ood"]["method"] == "msp" and line["ood"]["score"] == pytest.approx(line["top3"][0]["probability"], abs=1e-5)
    # A threshold above every score flags everything; the temperature in metrics.json is applied.
    (model_dir / "metrics.json").write_text(json.dumps({"ood": {"method": "msp", "threshold": 1.01},
                                                        "calibration": {"temperature": 1000.0}}))
    try:
        code, hot, _ = _lines(capsys, model_dir / "student.keras", paths.values())
    finally:
        (model_dir / "metrics.json").unlink()
    assert all(l["ood"]["flagged"] is True and l["ood"]["threshold"] == 1.01 for l in hot)
    # At T = 1000 the probabilities are all but uniform over the 3 classes.
    assert all(abs(l["top3"][0]["probability"] - 1 / 3) < 1e-3 for l in hot)


def test_explain_writes_a_gradcam_overlay_per_image(model_dir, tmp_path, capsys):
    paths = _images(tmp_path)
    out = tmp_path / "explained"
    code = predict.main(["predict", f"--model={model_dir / 'student.keras'}", f"--explain={out}", str(paths["good"])])
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert code == 0 and line["explanation"] == str(out / "good_gradcam.png")
    image = Image.open(out / "good_gradcam.png")
    assert image.size == (32, 32) and image.mode == "RGB"


def test_explain_needs_a_keras_model(tmp_path, capsys):
    (tmp_path / "m.tflite").write_bytes(b"x")
    code = predict.main(["predict", f"--model={tmp_path / 'm.tflite'}", f"--explain={tmp_path}", "x.jpg"])
    assert code == 2 and "--explain needs a .keras student" in capsys.readouterr().err

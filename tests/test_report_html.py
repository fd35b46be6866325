"""report.html: self-contained, every section present, legible at 23 classes, never a crash."""

import json
import os
import re

import numpy as np
import pytest

from keras_endokd import report as report_cli
from keras_endokd.classification_metrics import classification_metrics, plot_confusion_matrix
from keras_endokd.clinical import calibration, curves, gradcam, html_report
from keras_endokd.clinical.headless_chromium import find_chromium, render_page
from keras_endokd.clinical.probability_metrics import add_probability_metrics

SECTIONS = ("headline", "per-class", "confusion-matrix", "calibration", "roc-and-pr-curves",
            "training", "teachers-and-student", "explanations", "unfamiliar-inputs", "deployment",
            "model-card")
needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="no Chromium binary found "
                                    "(apt-get install chromium, or set CHROME_BIN)")


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


def fabricate_run(run_dir, num_classes=8, images=True, seed=0):
    """A run folder as train + export (with the clinical outputs) write it, from made-up
    predictions: metrics.json, config.json, history.csv, export_report.json, model_card.json and
    the PNGs. The last class has no test image when there are more than 8 classes."""
    os.makedirs(run_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"class-{i}" for i in range(num_classes)] if num_classes <= 8 else \
        [f"hyper-kvasir-class-{i:02d}" for i in range(num_classes)]
    present = num_classes if num_classes <= 8 else num_classes - 1
    labels = np.repeat(np.arange(present), 12)
    logits = rng.normal(0, 1, (len(labels), num_classes)) + 2.5 * np.eye(num_classes)[labels]
    probs = calibration.softmax(logits)
    predictions = probs.argmax(1)
    student = classification_metrics(labels, predictions, names)
    add_probability_metrics(student, probs, labels, names)
    student.update(params=51640, val_accuracy=0.8)
    metrics = {
        "student": student,
        "dataset": {"dataset": "synthetic", "num_classes": num_classes, "class_names": names},
        "teachers": [{"name": "mobile_x3", "params": 427976, "test_accuracy": 0.89},
                     {"name": "mobile_x2", "params": 196232, "test_accuracy": 0.88}],
        "config": {"kd": "relation", "dataset": "synthetic", "seed": 0},
        "calibration": {"temperature": 1.4, "fitted_on": "val",
                        "before": calibration.calibration_block(probs, labels),
                        "after": calibration.calibration_block(calibration.softmax(logits, 1.4), labels)},
    }
    _write_json(os.path.join(run_dir, "metrics.json"), metrics)
    _write_json(os.path.join(run_dir, "config.json"), {"kd": "relation", "epochs": 3, "dataset": "synthetic"})
    with open(os.path.join(run_dir, "history.csv"), "w") as f:
        f.write("epoch,accuracy,loss,loss_ce,val_accuracy,val_loss\n")
        for e in range(3):
            f.write(f"{e},{0.5 + 0.1 * e},{2 - 0.4 * e},{1.5 - 0.3 * e},{0.45 + 0.1 * e},{2.1 - 0.4 * e}\n")
    card = {"name": "keras-endokd student", "description": "A demonstration model, not for any "
            "clinical use.", "classes": names,
            "ood": {"method": "msp", "threshold": 0.41, "rule": "flag when score < threshold"}}
    checks = {k: {"accuracy": 0.8, "macro_f1": 0.79, "mcc": 0.77, "ece": 0.05, "brier": 0.3,
                  "macro_roc_auc": 0.95, **({"agreement": 0.995} if k != "keras_student" else {})}
              for k in ("keras_student", "float32", "int8", "android")}
    sizes = {f: {"bytes": b, "gzip_bytes": b // 2, "sha256": "ab" * 32} for f, b in
             (("student_float32.tflite", 217636), ("student_int8.tflite", 63712),
              ("student_android.tflite", 93760))}
    _write_json(os.path.join(run_dir, "export_report.json"), {
        "status": "ok", "conversion": {"sizes": sizes}, "checks": checks,
        "micro": {"model_bytes": 63712, "arena_used_bytes": 127344, "arena_size_recommended": 153600,
                  "arena_target_met": True, "model_target_met": True, "ops": ["CONV_2D", "SOFTMAX"]},
        "latency": {"int8_ms_1_thread": 0.41, "float32_ms_1_thread": 0.62},
        "model_card": card})
    _write_json(os.path.join(run_dir, "model_card.json"), card)
    if images:
        plot_confusion_matrix(student["confusion_matrix"], names, os.path.join(run_dir, "confusion_matrix.png"))
        calibration.reliability_diagram(probs, labels, os.path.join(run_dir, "reliability_diagram.png"))
        curves.plot_roc_pr_curves(probs, labels, names, os.path.join(run_dir, "roc_pr_curves.png"))
        chosen = gradcam.select_examples(labels, predictions, 4, 2)
        pictures = rng.integers(0, 255, (len(chosen), 32, 32, 3)).astype(np.uint8)
        gradcam.explanation_grid(pictures, labels[chosen], predictions[chosen],
                                 rng.uniform(0, 1, (len(chosen), 32, 32)), names,
                                 os.path.join(run_dir, "explanations.png"))
    return run_dir, names


@pytest.fixture(scope="module")
def run8(tmp_path_factory):
    return fabricate_run(str(tmp_path_factory.mktemp("run8")), 8)


@pytest.fixture(scope="module")
def run23(tmp_path_factory):
    return fabricate_run(str(tmp_path_factory.mktemp("run23")), 23)


def _assert_self_contained(page):
    for ref in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page, flags=re.I):
        assert ref.startswith(("data:image/png;base64,", "#")), ref[:80]
    lowered = page.lower()
    for needle in ("<script", "<link", "<iframe", "<object", "@import", "url(", "@font-face"):
        assert needle not in lowered, needle


def test_report_is_self_contained_and_has_every_section(run8):
    run_dir, names = run8
    path = html_report.write_report(run_dir)
    assert path == os.path.join(run_dir, "report.html")
    assert not [f for f in os.listdir(run_dir) if f.startswith(".report.html")]  # atomic write
    page = open(path, encoding="utf-8").read()
    _assert_self_contained(page)
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert "Missing:" not in page and "could not be drawn" not in page
    assert page.count("data:image/png;base64,") == 5  # confusion, reliability, curves, training, grid
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    s = metrics["student"]
    assert f"{s['accuracy']:.3f}" in page and f"{s['ece']:.3f}" in page
    assert f"{s['per_class']['class-3']['roc_auc']:.3f}" in page
    assert "T = 1.400" in page and "127.3 KB" in page and "mobile_x3" in page
    assert "not for any clinical use" in page and "int8_ms_1_thread" in page


def test_report_for_23_classes_keeps_every_class_readable(run23):
    run_dir, names = run23
    page = html_report.build_report(run_dir)
    _assert_self_contained(page)
    cm = page[page.index('<table class="cm">'):]
    cm = cm[:cm.index("</table>")]
    assert cm.count("<tr>") == 1 + 23  # header and one row per class
    for i, name in enumerate(names):
        assert f"{i} · {name}" in cm
    assert "no test image of this class" in page  # the absent class: no ROC-AUC, and why
    assert page.count('class="scroll tall"') == 2  # per-class and confusion tables scroll in place


def test_missing_pieces_are_named_and_the_page_is_still_written(tmp_path):
    run_dir = str(tmp_path)
    _write_json(os.path.join(run_dir, "metrics.json"), {"student": {"accuracy": 0.5}})
    with open(os.path.join(run_dir, "export_report.json"), "w") as f:
        f.write('{"status": "ok", "conversion": ')  # a truncated file
    page = open(html_report.write_report(run_dir), encoding="utf-8").read()
    for what in ("no history.csv", "no confusion_matrix.png", "no roc_pr_curves.png",
                 "export_report.json could not be read", "no model card", "no explanations.png",
                 "no calibration entry", "student.per_class"):
        assert what in page, what
    assert "could not be drawn" not in page
    for section in SECTIONS:
        assert f'<section id="{section}">' in page


def test_a_section_that_cannot_be_drawn_does_not_cost_the_page(tmp_path):
    run_dir = str(tmp_path)
    # Wrong types everywhere: a list of numbers where a teacher dict belongs, a string per class.
    _write_json(os.path.join(run_dir, "metrics.json"), {
        "student": {"accuracy": 0.5, "per_class": "oops", "confusion_matrix": [[1]]},
        "teachers": [3, 4], "calibration": "none"})
    page = html_report.build_report(run_dir)
    assert "could not be drawn" in page and '<section id="model-card">' in page


def test_report_errors_and_the_command(tmp_path, capsys):
    with pytest.raises(html_report.ReportError, match="no such folder"):
        html_report.build_report(str(tmp_path / "nothing"))
    assert report_cli.main(["report", f"--run_dir={tmp_path / 'nothing'}"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert report_cli.main(["report", f"--run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "no readable metrics.json" in err and "Traceback" not in err
    assert report_cli.main(["report"]) == 2
    assert "--run_dir is required" in capsys.readouterr().err
    assert report_cli.main(["report", "--help"]) == 0
    assert "--run_dir" in capsys.readouterr().out


def test_the_command_rebuilds_the_page(run8, tmp_path, capsys):
    run_dir, _ = run8
    out = str(tmp_path / "elsewhere.html")
    assert report_cli.main(["report", f"--run_dir={run_dir}", f"--output={out}"]) == 0
    assert "wrote" in capsys.readouterr().out and os.path.getsize(out) > 10_000


@needs_chromium
@pytest.mark.xdist_group("chromium")
@pytest.mark.parametrize("fixture", ["run8", "run23"])
def test_report_opens_in_headless_chromium(fixture, request, tmp_path):
    from PIL import Image

    run_dir, _ = request.getfixturevalue(fixture)
    path = html_report.write_report(run_dir, str(tmp_path / "report.html"))
    shot = str(tmp_path / "report.png")
    page = render_page(path, shot, width=1280)
    assert page["external_requests"] == []
    assert page["exceptions"] == [] and page["console_errors"] == [] and page["log_errors"] == []
    assert page["requests"][0] == page["url"]
    assert page["content_size"][0] <= 1280  # wide tables scroll in their box, not the page
    width, height = Image.open(shot).size
    assert width == 1280 and height == page["content_size"][1] > 2000


@needs_chromium
@pytest.mark.xdist_group("chromium")
def test_the_browser_check_catches_external_loads_and_script_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><link rel="stylesheet" href="https://example.com/a.css">'
                   '</head><body><img src="http://example.com/x.png">'
                   '<script>console.error("broken"); throw new Error("boom")</script></body></html>')
    page = render_page(str(bad))
    assert sorted(page["external_requests"]) == ["http://example.com/x.png", "https://example.com/a.css"]
    assert any("boom" in e for e in page["exceptions"])
    assert page["console_errors"] == ["broken"]
    assert report_cli.main(["report", f"--run_dir={tmp_path / 'none'}", "--screenshot=x.png"]) == 2

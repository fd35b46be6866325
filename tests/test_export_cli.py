"""`python -m keras_endokd.export`: its flag errors, the settings it takes from the run, and an
export on a tiny test split.

The run folder is what the train command leaves: config.json (an image folder of 40 frames of
the four colour classes, 8 of them test, --kd=none) and the toy student of test_export.py.
"""

import dataclasses
import json
import os
import shutil

import pytest

from test_export import CLASSES, COLOURS, SIZE, _frame, _read, toy_source, trained_student

pytestmark = pytest.mark.xdist_group("test_export_cli")  # its module fixtures are built once


def test_export_cli_usage_errors(tmp_path, capsys):
    from keras_endokd import export

    assert export.main(["export", f"--run_dir={tmp_path / 'missing'}"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert export.main(["export", f"--run_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "has no student.keras: run python -m keras_endokd.train" in err
    assert "Traceback" not in err
    (tmp_path / "student.keras").write_bytes(b"")
    (tmp_path / "config.json").write_text("{}")
    assert export.main(["export", f"--run_dir={tmp_path}", "--sparsity=1.0"]) == 2
    assert "outside [0, 1)" in capsys.readouterr().err
    assert export.main(["export", f"--run_dir={tmp_path}", "--per_tensor", "--qat"]) == 2
    assert "--per_tensor and --qat do not combine" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"per_tensor": True}))
    assert export.main(["export", f"--run_dir={tmp_path}", "--qat"]) == 2
    assert "add --noper_tensor" in capsys.readouterr().err


def _image_folder(folder, per_class):
    for label, name in enumerate(CLASSES):
        os.makedirs(folder / name)
        for i in range(per_class):
            _frame(COLOURS[label], 60, 50, seed=100 * label + i).save(folder / name / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A run folder as the train command leaves it: config.json (a folder dataset of 40 images,
    8 of them test, --kd=none), student.keras."""
    from keras_endokd.run_config import RunConfig

    root = tmp_path_factory.mktemp("folder_run")
    data = _image_folder(root / "data", per_class=10)
    run_dir = root / "run"
    run_dir.mkdir()
    cfg = RunConfig(kd="none", dataset="folder", data_dir=str(data), image_size=SIZE, sparsity=0.0,
                    per_tensor=True, int8_max_bytes=50_000, min_agreement=0.97, batch_size=16,
                    seed=3, temperature=2.0, output_dir=str(run_dir))
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    trained_student(toy_source()).save(run_dir / "student.keras")
    return run_dir


def test_export_cli_takes_every_setting_from_the_run_unless_a_flag_overrides_it(
        folder_run, monkeypatch):
    from keras_endokd import export
    from keras_endokd.deploy import deployment

    calls = []
    monkeypatch.setattr(deployment, "export_student",
                        lambda run_dir, student, source, teachers, **kw: calls.append(kw) or {})
    assert export.main(["export", f"--run_dir={folder_run}"]) == 0
    run = {"sparsity": 0.0, "per_tensor": True, "int8_max_bytes": 50_000, "min_agreement": 0.97,
           "qat": False, "fine_tune_epochs": 3, "image_size": SIZE, "batch_size": 16, "seed": 3,
           "temperature": 2.0, "crop_border": False}
    assert {k: calls[0][k] for k in run} == run
    assert export.main(["export", f"--run_dir={folder_run}", "--min_agreement=0.5",
                        "--sparsity=0.25", "--noper_tensor", "--int8_max_bytes=0", "--qat",
                        "--fine_tune_epochs=2"]) == 0
    flags = {"sparsity": 0.25, "per_tensor": False, "int8_max_bytes": 0, "min_agreement": 0.5,
             "qat": True, "fine_tune_epochs": 2}
    assert {k: calls[1][k] for k in run} == {**run, **flags}


@pytest.mark.slow
def test_export_cli_on_a_tiny_test_split_writes_its_models(folder_run, tmp_path, capsys):
    """8 test images: agreement is measured on all 40, and the run's settings are the export's."""
    from keras_endokd import export

    run_dir = tmp_path / "run"
    shutil.copytree(folder_run, run_dir)
    assert export.main(["export", f"--run_dir={run_dir}"]) == 0, capsys.readouterr().err
    report = json.loads(_read(run_dir, "export_report.json"))
    assert report["status"] == "ok"
    assert report["agreement_check"]["images_from"] == {"train": 28, "val": 4, "test": 8}
    assert report["checks"]["int8"]["num_images"] == 8 and report["checks"]["int8"]["agreement_images"] == 40
    assert report["settings"]["min_agreement"] == 0.97 and report["settings"]["per_tensor"]
    assert report["conversion"]["weight_scales"] == "per tensor"
    assert {"student_int8.tflite", "student_android.tflite", "student_float32.tflite",
            "model_data.cc"} <= set(os.listdir(run_dir))

"""The default teachers shipped in the package: keyed to today's generator and settings, and as
good as recorded."""

import json
import os

import numpy as np
import pytest

from keras_endokd.data import load_dataset
from keras_endokd.distill.teacher_store import SHIPPED_DIR, TeacherStore, data_fingerprint
from keras_endokd.models.teachers import DEFAULT_TEACHERS
from keras_endokd.run_config import RunConfig, make_datasets, predict_labels
from keras_endokd.teacher_stage import obtain_teachers, teacher_settings

pytestmark = pytest.mark.xdist_group("test_shipped_teachers")


@pytest.fixture(scope="module")
def default_data():
    cfg = RunConfig()
    source = load_dataset(cfg.dataset, None, None, cfg.fold, cfg.resolved_data_seed(), cfg.image_size)
    return cfg, source


def test_a_shipped_file_exists_for_every_default_teacher_under_todays_key(default_data):
    """Fails when the generator or the teacher settings change without a rebuild:
    run `python -m experiments.build_teachers` and commit keras_endokd/models/pretrained/."""
    cfg, source = default_data
    store = TeacherStore("unused")
    fingerprint = data_fingerprint(source)
    shipped = sorted(os.listdir(SHIPPED_DIR))
    expected = []
    for name in DEFAULT_TEACHERS:
        stem = os.path.basename(store.path(name, store.key(name, fingerprint, teacher_settings(cfg))))[:-6]
        expected += [stem + ".json", stem + ".keras"]
    assert shipped == sorted(expected), "stale shipped teachers: run python -m experiments.build_teachers"


def test_the_default_run_uses_the_shipped_teachers_at_their_recorded_accuracy(default_data, tmp_path):
    import dataclasses

    cfg, source = default_data
    cfg = dataclasses.replace(cfg, output_dir=str(tmp_path / "run"))  # an empty teacher store beside it
    datasets = make_datasets(cfg, source)
    teachers, infos = obtain_teachers(cfg, source, datasets)
    assert [i["name"] for i in infos] == list(DEFAULT_TEACHERS)
    for model, info in zip(teachers, infos):
        assert info["shipped"] and os.path.dirname(info["path"]) == SHIPPED_DIR
        assert info["test_accuracy"] >= 0.88  # the calibration: teachers about 90%
        accuracy = float(np.mean(predict_labels(model, datasets["test"]) == source.splits["test"].labels))
        assert accuracy == pytest.approx(info["test_accuracy"], abs=0.004)  # within 3 of 800 images
        with open(info["path"][: -len(".keras")] + ".json") as f:
            assert json.load(f)["settings"] == teacher_settings(cfg)
    assert not os.path.exists(tmp_path / "teachers")  # nothing trained, nothing stored

"""Teachers that learnt nothing, or diverged, are flagged and never kept for a later run."""

import json
import os

import numpy as np
import pytest

from keras_endokd.data.source import DatasetSource, Split
from keras_endokd.teacher_stage import NEAR_CHANCE_MARGIN, chance_check

TINY = ["--image_size=32", "--teachers=tiny_resnet", "--teacher_epochs=1", "--epochs=1", "--teacher_views=1",
        "--noexport", "--noshipped_teachers", "--nodeterministic"]


def _source(test_labels):
    split = Split(np.asarray(test_labels), images=np.zeros((len(test_labels), 4, 4, 3), np.uint8))
    return DatasetSource("toy", ("a", "b", "c", "d"), {"train": split, "val": split, "test": split})


def test_chance_is_the_majority_share_of_the_test_split():
    source = _source([0] * 6 + [1, 2, 3, 3])  # majority class: 60%
    assert chance_check(0.60, source) == {"chance_accuracy": 0.6, "near_chance": True}
    assert chance_check(0.60 + NEAR_CHANCE_MARGIN + 0.01, source)["near_chance"] is False
    assert chance_check(0.25, _source([0, 1, 2, 3]))["near_chance"] is True


@pytest.mark.slow
def test_a_teacher_that_learnt_nothing_is_flagged_and_not_stored(tmp_path, capsys):
    from keras_endokd import train

    teachers = tmp_path / "teachers"
    code = train.main(["train", *TINY, "--teacher_learning_rate=1e-12", f"--teacher_dir={teachers}",
                       f"--output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr()
    assert code == 0, (err.out + err.err)[-2000:]
    assert "WARNING: teacher tiny_resnet is at or near chance" in err.out + err.err
    info = json.loads((tmp_path / "run" / "metrics.json").read_text())["teachers"][0]
    assert info["near_chance"] is True and info["stored"] is False
    assert info["test_accuracy"] <= info["chance_accuracy"] + NEAR_CHANCE_MARGIN
    assert not [f for f in os.listdir(teachers) if f.endswith(".keras")] if teachers.exists() else True


@pytest.mark.slow
def test_a_diverged_teacher_leaves_nothing_to_continue_from(tmp_path, capsys):
    from keras_endokd import train

    teachers = tmp_path / "teachers"
    code = train.main(["train", *TINY, "--teacher_learning_rate=1e30", f"--teacher_dir={teachers}",
                       f"--output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "training loss became" in err and "Traceback" not in err, err[-2000:]
    left = sorted(os.listdir(teachers)) if teachers.exists() else []
    assert not [f for f in left if f.endswith((".keras", ".backup"))], left

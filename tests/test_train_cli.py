"""The train command's flag errors. (A whole run, every file of its folder, is checked end to end
by test_reliability's kill-and-resume test.)

One error goes through a real `python -m keras_endokd.train` process (exit code 2, no stack
trace); the rest call the same `main` in this process, which saves a TensorFlow start-up each."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(tmp_path, *flags):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "keras_endokd.train", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def test_a_bad_flag_exits_2_with_one_paragraph_and_no_stack_trace(tmp_path):
    result = _train(tmp_path, "--kd=crd", f"--output_dir={tmp_path / 'bad'}")
    assert result.returncode == 2
    assert "error: Unknown --kd method(s) ['crd']" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flag, message", [
    ("--teachers=resnet9000", "unknown teacher"),
    ("--image_size=8", "impossible"),
    ("--sparsity=1.5", "outside [0, 1)"),
    ("--teachers=missing.keras", "does not exist"),
    ("--resume", "no run to continue"),
])
def test_bad_flags_get_a_one_paragraph_error(tmp_path, capsys, flag, message):
    from keras_endokd import train

    assert train.main(["train", flag, f"--output_dir={tmp_path / 'bad'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and not os.path.exists(tmp_path / "bad")


def test_flag_defaults_and_help_follow_the_library():
    """The flags are defined without importing TensorFlow, so their defaults repeat RunConfig's and
    the --teachers help lists the registry by hand: this keeps the copies equal."""
    import dataclasses

    from experiments import kd_study
    from keras_endokd import train
    from keras_endokd.models.teachers import TEACHER_NAMES
    from keras_endokd.run_config import RunConfig

    shared = [f for f in dataclasses.fields(RunConfig) if f.name in train.FLAGS and f.name != "teachers"]
    assert len(shared) > 30
    for field in shared:
        assert train.FLAGS[field.name].default == field.default, field.name
    assert kd_study.FLAGS["teacher_epochs"].default == RunConfig.teacher_epochs  # the study reuses them
    assert all(name in train.FLAGS["teachers"].help for name in TEACHER_NAMES)

"""The train command's flag errors. (A whole run, every file of its folder, is checked end to end
by test_reliability's kill-and-resume test.)"""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(tmp_path, *flags):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "keras_endokd.train", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("flag, message", [
    ("--kd=crd", "Unknown --kd"),
    ("--teachers=resnet9000", "unknown teacher"),
    ("--image_size=8", "impossible"),
    ("--sparsity=1.5", "outside [0, 1)"),
    ("--teachers=missing.keras", "does not exist"),
    ("--resume", "no run to continue"),
])
def test_bad_flags_get_a_one_paragraph_error(tmp_path, flag, message):
    result = _train(tmp_path, flag, f"--output_dir={tmp_path / 'bad'}")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr

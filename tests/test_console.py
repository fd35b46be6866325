"""keras_endokd.console: no TensorFlow native noise on stderr, every real error kept; progress lines.

The noise checks run real processes with TF_CPP_MIN_LOG_LEVEL unset (as a user's shell has it),
and look for any native log line at all, not just the patterns the filter knows: a new kind of
noise fails them too.
"""

import io
import os
import re
import subprocess
import sys
import textwrap

import pytest

from keras_endokd.console import MARK, NOISE, Progress, format_seconds, noise_regex, progress

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Any absl/TensorFlow C++ log line, and the words of the CPU-machine noise, whatever the pattern.
NATIVE_LINE = re.compile(r"^[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\]|InitializeLog|cuInit|cuda|oneDNN|"
                         r"use_unbounded_threadpool|fully_quantize|rebuild TensorFlow", re.M)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", MARK)}
    return {**env, "PYTHONPATH": REPO, **extra}


def _python(code, env=None, args=()):
    return subprocess.run([sys.executable, *args] + (["-c", textwrap.dedent(code)] if code else []),
                          cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=300)


def test_a_typo_gets_its_error_and_no_tensorflow_noise():
    result = _python(None, args=("-m", "keras_endokd.train", "--kd=bogus"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: Unknown --kd method(s) ['bogus']"), result.stderr
    assert result.stderr.count("\n") == 1 and not NATIVE_LINE.search(result.stderr), result.stderr


def test_tensorflow_noise_is_dropped_and_real_errors_kept_in_order():
    result = _python("""
        import logging, os, sys
        from keras_endokd.console import quiet_native_logs
        quiet_native_logs()
        quiet_native_logs()  # idempotent
        import tensorflow as tf
        print(tf.config.list_physical_devices(), flush=True)
        print(list(tf.data.Dataset.range(4).map(lambda x: x * 2,
                                                 num_parallel_calls=tf.data.AUTOTUNE)), flush=True)
        logging.getLogger("absl").warning("Compiled the loaded model, but the compiled metrics have "
                                          "yet to be built.")
        tf.get_logger().warning("5 out of the last 5 calls to <function f at 0x7f> triggered "
                                "tf.function retracing. Tracing is expensive.")
        os.write(2, b"E0000 00:00:1.5 7 node_def_util.cc:682] NodeDef mentions attribute "
                    b"use_unbounded_threadpool which is not in the op definition: Op<...>\\n")
        os.write(2, b"native real line\\n")
        sys.stderr.write("real error\\n")
        logging.getLogger("absl").warning("a real absl warning")
        raise ValueError("boom")
    """)
    assert result.returncode == 1
    err = result.stderr
    assert "CPU" in result.stdout and "compiled metrics" not in err and "retracing" not in err
    assert not NATIVE_LINE.search(err), err
    wanted = ["native real line", "real error", "a real absl warning", "Traceback (most recent call",
              'File "<string>", line', "ValueError: boom"]
    positions = [err.find(w) for w in wanted]
    assert -1 not in positions and positions == sorted(positions), err


def test_what_a_crashing_process_wrote_last_still_comes_out():
    result = _python("""
        import os
        from keras_endokd.console import quiet_native_logs
        quiet_native_logs()
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\\n")
        os.write(2, b"F0000 00:00:1.2 99 check.cc:1] Check failed: size > 0\\n")
        os.abort()
    """)
    assert result.returncode != 0
    assert result.stderr == "F0000 00:00:1.2 99 check.cc:1] Check failed: size > 0\n"


@pytest.mark.parametrize("level", ["0", "2"])
def test_a_level_the_user_set_is_left_alone(level):
    result = _python("""
        import os
        before = os.fstat(2).st_ino
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # a command's own setdefault does not override
        from keras_endokd.console import quiet_native_logs
        quiet_native_logs()
        print(os.environ["TF_CPP_MIN_LOG_LEVEL"], os.fstat(2).st_ino == before)
    """.replace('"2"  #', f'"{level}"  #'), env=_env(TF_CPP_MIN_LOG_LEVEL=level))
    assert result.returncode == 0 and result.stdout.split() == [level, "True"], result.stderr


def test_without_a_user_level_the_commands_level_is_kept_and_children_are_quiet_too():
    child = "import os; s = os.fstat(2).st_ino; from keras_endokd.console import quiet_native_logs; " \
            "quiet_native_logs(); print(os.environ['TF_CPP_MIN_LOG_LEVEL'], os.fstat(2).st_ino != s)"
    result = _python(f"""
        import os, subprocess, sys
        before = os.fstat(2).st_ino
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as train.py does before parse_flags
        from keras_endokd.console import quiet_native_logs
        quiet_native_logs()
        print(os.environ["TF_CPP_MIN_LOG_LEVEL"], os.fstat(2).st_ino != before, flush=True)
        subprocess.run([sys.executable, "-c", {child!r}], check=True, stderr=subprocess.PIPE)
    """)
    assert result.returncode == 0 and result.stdout.split() == ["2", "True"] * 2, result.stderr


def test_the_noise_patterns_match_the_lines_tensorflow_prints_and_no_others():
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796111345.706811    3569 port.cc:153] oneDNN custom operations are on. You may",
        "I0000 00:00:1796111345.707403    3569 cudart_stub.cc:31] Could not find cuda drivers on your "
        "machine, GPU will not be used.",
        "E0000 00:00:1796111254.264006    2522 cuda_platform.cc:52] failed call to cuInit: INTERNAL: x",
        "I0000 00:00:1796111356.815996    3716 cpu_feature_guard.cc:227] This TensorFlow binary is "
        "optimized to use available CPU instructions in performance-critical operations.",
        "To enable the following instructions: AVX2 AVX512F AVX512_VNNI FMA, in other operations, "
        "rebuild TensorFlow with the appropriate compiler flags.",
        "W0000 00:00:1796111876.600191    9177 tf_tfl_flatbuffer_helpers.cc:364] Ignored output_format.",
        "fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, output_inference_type: "
        "FLOAT32",
        "2024-05-01 12:00:00.123456: I tensorflow/core/util/port.cc:113] oneDNN custom operations are on.",
    ]
    real = [
        "E0000 00:00:1796111254.264006    2522 node_def_util.cc:682] NodeDef mentions attribute foo",
        "F0000 00:00:1796111254.264006    2522 cuda_platform.cc:52] failed call to cuInit: fatal",
        "E0000 00:00:1796111254.264006    2522 op_kernel.cc:1830] OP_REQUIRES failed at x: NOT_FOUND",
        "error: Unknown --kd method(s) ['bogus'].",
        "Traceback (most recent call last):",
    ]
    assert [line for line in noise if not NOISE.match(line)] == []
    assert [line for line in real if NOISE.match(line)] == []
    with_gpu = noise_regex(gpu=True)  # there, the CUDA lines say why the GPU is not used
    assert with_gpu.match(noise[1]) and not with_gpu.match(noise[2]) and not with_gpu.match(noise[3])


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_progress_prints_every_tenth_with_elapsed_and_eta_off_a_terminal():
    clock, out = FakeClock(), io.StringIO()
    with progress(100, "checking images", stream=out, clock=clock) as bar:
        clock.t += 1
        bar.update(10)  # within the first 2 s: quiet
        assert out.getvalue() == "" and bar.eta() == pytest.approx(9.0)
        clock.t += 4
        bar.update(15)  # 25 done in 5 s: 75 left at 5/s
        clock.t += 1
        bar.update(1)  # 26: not another tenth yet
        clock.t += 2
        bar.update(4)  # 30 in 8 s
        clock.t += 12
        bar.update(70)  # done: the final line says it
    assert out.getvalue().splitlines() == [
        "[keras-endokd] checking images: 25/100 (25%), 5s elapsed, ~15s left",
        "[keras-endokd] checking images: 30/100 (30%), 8s elapsed, ~19s left",
        "[keras-endokd] checking images: 100/100 in 20s",
    ]


def test_progress_redraws_one_line_on_a_terminal_and_short_work_prints_once():
    clock, out = FakeClock(), io.StringIO()
    bar = Progress(1000, "cache", stream=out, clock=clock, tty=True)
    clock.t += 3
    bar.update(100)
    bar.update(100)  # same instant: no redraw
    clock.t += 3
    bar.update(300)
    clock.t += 6
    bar.update(500)
    bar.close()
    bar.close()
    text = out.getvalue()
    last = text.split("\r")[-1]  # padded over the longer line before it
    assert text.count("\r") == 3 and last.endswith("\n")
    assert last.rstrip() == "[keras-endokd] cache: 1000/1000 in 12s" and len(last) > 40
    assert "\r[keras-endokd] cache: 100/1000 (10%), 3s elapsed, ~27s left" in text
    assert "200/1000" not in text and "500/1000 (50%), 6s elapsed, ~6s left" in text

    quick = io.StringIO()
    with progress(5, "export", stream=quick, clock=FakeClock()) as bar:
        for _ in range(5):
            bar.update()
    assert quick.getvalue() == "[keras-endokd] export: 5/5 in 0s\n"


def test_progress_leaves_an_exception_on_its_own_line():
    clock, out = FakeClock(), io.StringIO()
    with pytest.raises(RuntimeError):
        with progress(10, "convert", stream=out, clock=clock, tty=True) as bar:
            clock.t += 5
            bar.update(2)
            raise RuntimeError("converter failed")
    assert out.getvalue() == "\r[keras-endokd] convert: 2/10 (20%), 5s elapsed, ~20s left\n"


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 4.6, 59, 60, 185, 3599, 3720, -1)] == [
        "0s", "5s", "59s", "1m00s", "3m05s", "59m59s", "1h02m", "0s"]

"""What a command prints besides its results: no native-library noise, and progress for long work.

TensorFlow's C++ side writes several lines to stderr on a CPU machine that say nothing the user
can act on (oneDNN is on, no CUDA driver, cuInit failed, a NodeDef attribute mismatch, converter
chatter). `TF_CPP_MIN_LOG_LEVEL` set before TensorFlow is imported stops the INFO and WARNING lines
that come after absl's log initialisation, but no environment variable stops the lines printed
before it (`WARNING: All log messages before absl::InitializeLog() ...`, `port.cc`, `cudart_stub.cc`)
or the converter's bare `fully_quantize: ...` line, and raising the level to 3 would hide every
C++ ERROR line, real ones included. So `quiet_native_logs` keeps the level at 2 and passes file
descriptor 2 through a filter that drops only lines matching the known-noise patterns below.

The filter runs in a separate small process, not a thread: whatever a crashing process wrote to
stderr just before it died (a C++ `Check failed`, an abort message) is then still forwarded, since
the filter reads the pipe to its end after the writer is gone. Python's own stderr goes through the
same pipe, so a native error line and the traceback that follows it keep their order; at exit the
pipe is drained before the process ends.

Nothing here imports TensorFlow: the commands call `quiet_native_logs` before they import it.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import re
import subprocess
import sys
import time
from typing import Callable, Optional, TextIO

PREFIX = "[keras-endokd]"  # as keras_endokd.run_config.log, which cannot be imported without TensorFlow

LEVEL_VAR = "TF_CPP_MIN_LOG_LEVEL"
# INFO and WARNING off, ERROR on: the ERROR lines that are noise are dropped by pattern instead.
DEFAULT_LEVEL = "2"
# Set to the level this module left TF_CPP_MIN_LOG_LEVEL at, for child processes to recognise it.
MARK = "KERAS_ENDOKD_QUIET_LEVEL"

# An absl/TensorFlow C++ log line up to the file name: `E0000 00:00:1796.3 2522 path/file.cc:52] `
# (absl) or `2024-05-01 12:00:00.1: E path/file.cc:52] ` (older glog style). Never FATAL (`F`).
_LOG = r"(?:[IWE]\d{4} [\d:.]+ +\d+ |\d{4}-\d\d-\d\d [\d:.]+: [IWE] )(?:\S*/)?"
NOISE_PATTERNS = (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR\s*$",
    _LOG + r"port\.cc:\d+\] oneDNN custom operations are on\.",
    _LOG + r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU "
           r"instructions",
    # The second line of the cpu_feature_guard message.
    r"To enable the following instructions: .*in other operations, rebuild TensorFlow with the "
    r"appropriate compiler flags\.\s*$",
    _LOG + r"node_def_util\.cc:\d+\] NodeDef mentions attribute use_unbounded_threadpool which is not "
           r"in the op definition",
    _LOG + r"tf_tfl_flatbuffer_helpers\.cc:\d+\] Ignored (?:output_format|drop_control_dependency)\.",
    _LOG + r"\S+\.cc:\d+\] Estimated count of arithmetic ops: ",
    r"fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+\s*$",
    r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.\s*$",
)
# Noise only where there is no GPU: with one, these lines say why TensorFlow is not using it.
CUDA_NOISE_PATTERNS = (
    _LOG + r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will not be used\.",
    _LOG + r"cuda_platform\.cc:\d+\] failed call to cuInit: ",
    _LOG + r"cuda_(?:diagnostics|executor)\.cc:\d+\] (?:retrieving CUDA diagnostic information|hostname:"
           r"|libcuda reported version|kernel driver does not appear to be running|could not open file to "
           r"read NUMA node)",
    _LOG + r"\S+\.cc:\d+\] Unable to register cu(?:DNN|FFT|BLAS) factory: ",
    _LOG + r"\S+\.cc:\d+\] TF-TRT Warning: Could not find TensorRT",
)


def noise_regex(gpu: bool = False) -> re.Pattern:
    """The lines the stderr filter drops, on a machine with (`gpu`) or without an NVIDIA GPU."""
    patterns = NOISE_PATTERNS + (() if gpu else CUDA_NOISE_PATTERNS)
    return re.compile("|".join(f"(?:{p})" for p in patterns))


NOISE = noise_regex(gpu=False)


def has_nvidia_gpu() -> bool:
    """Whether the NVIDIA driver sees a GPU here, checked without loading CUDA or TensorFlow."""
    try:
        return bool(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return False


# Python-side log records that are noise, by logger name: Keras' legacy loader warns on every load
# of a compiled model, and TensorFlow warns when predict runs on many freshly built models (every
# run and study builds its own), which is how this project works, not a bug.
_PY_NOISE = {
    "absl": re.compile(r"Compiled the loaded model, but the compiled metrics have yet to be built"),
    "tensorflow": re.compile(r"\d+ out of the last \d+ calls to .* triggered tf\.function retracing"),
}

# Reads the pipe on stdin, writes every line that is not noise to stdout (the real stderr). A
# partial line is forwarded after 50 ms without more data, so prompts and \r progress bars of
# child processes still show. SIGINT is ignored so that Ctrl-C leaves it to drain what the
# interrupted process writes last; it exits when every writer has closed the pipe.
_RELAY = r"""
import os, re, select, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
noise = re.compile(sys.argv[1].encode())
broken = False
def out(data):
    global broken
    while data and not broken:
        try:
            data = data[os.write(1, data):]
        except InterruptedError:
            pass
        except OSError:
            broken = True
buf = b""
while True:
    if buf and not select.select([0], [], [], 0.05)[0]:
        out(buf)
        buf = b""
    data = os.read(0, 65536)
    if not data:
        break
    *lines, buf = (buf + data).split(b"\n")
    out(b"".join(line + b"\n" for line in lines if not noise.match(line)))
if buf and not noise.match(buf):
    out(buf)
"""

_done = False


def _initial_environ() -> Optional[dict]:
    """The environment this process started with, or None where it cannot be read."""
    try:
        with open("/proc/self/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return None
    return dict(entry.decode(errors="replace").split("=", 1) for entry in entries if b"=" in entry)


def _set_by_user(name: str) -> bool:
    """Whether the user chose `name`'s value, rather than a command or a parent command.

    Several commands `setdefault` the level before they reach `parse_flags`; that is the command's
    default, not the user's choice, so the environment the process started with decides. A value
    inherited from a parent that quieted itself (it left `MARK` equal to the level) is not the
    user's either: the child of a quiet command is quiet too. Where the initial environment cannot
    be read, any value counts as the user's.
    """
    env = _initial_environ()
    if env is None:
        env = os.environ
    return name in env and env[name] != env.get(MARK)


class _DropNoise(logging.Filter):
    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not self.pattern.search(record.getMessage())
        except Exception:  # a malformed record is not ours to drop
            return True


def _quiet_python_logs() -> None:
    from absl import logging as absl_logging  # first, so that the "absl" logger is absl's own class

    for name, pattern in _PY_NOISE.items():
        logger = absl_logging.get_absl_logger() if name == "absl" else logging.getLogger(name)
        logger.addFilter(_DropNoise(pattern))


def _filter_stderr() -> bool:
    """Routes fd 2 through the relay process; False (and nothing changed) where that cannot work."""
    if os.name != "posix":
        return False
    try:
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, ValueError, AttributeError):
        return False
    pattern = noise_regex(has_nvidia_gpu()).pattern
    read_end, write_end = os.pipe()
    try:
        relay = subprocess.Popen([sys.executable, "-I", "-S", "-c", _RELAY, pattern], stdin=read_end,
                                 stdout=real, stderr=real, close_fds=True)
    except OSError:
        for fd in (read_end, write_end, real):
            os.close(fd)
        return False
    os.close(read_end)
    os.dup2(write_end, 2)  # inheritable: child processes' stderr is filtered too
    os.close(write_end)
    pid = os.getpid()

    def drain() -> None:
        """Puts the real stderr back on fd 2, closing the pipe, and waits for the relay to finish."""
        if os.getpid() != pid:  # a forked child exiting through atexit
            return
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        try:
            os.dup2(real, 2)
            relay.wait(timeout=5)  # longer only if a child process still holds the pipe
        except Exception:
            pass

    atexit.register(drain)
    return True


def quiet_native_logs() -> None:
    """Silences TensorFlow's native start-up and CPU-machine noise; call before importing TensorFlow.

    Does nothing if the user set `TF_CPP_MIN_LOG_LEVEL` (their way to see every line); otherwise sets
    it to 2 unless the command already chose a level, drops the known-noise Python log records and
    filters fd 2 by the known-noise patterns (the CUDA ones only where no NVIDIA GPU is present).
    Real errors, tracebacks and everything else on stderr pass unchanged. Safe to call more than
    once; the first call decides.
    """
    global _done
    if _done:
        return
    _done = True
    if _set_by_user(LEVEL_VAR):
        return
    os.environ[MARK] = os.environ.setdefault(LEVEL_VAR, DEFAULT_LEVEL)
    _quiet_python_logs()
    # Not while something else has redirected stderr (pytest's capture, redirect_stderr): moving fd 2
    # under it would reorder or lose what it captures.
    if sys.stderr is sys.__stderr__:
        _filter_stderr()


def format_seconds(seconds: float) -> str:
    """`42s`, `3m05s`, `1h02m`: short enough for a progress line."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Done/total, elapsed time and time left, for long work that is not a Keras `fit`.

    Nothing is printed during the first `quiet_s` seconds, so short work prints only the final
    line. After that, a terminal gets one line redrawn in place (`\\r`, at most every `redraw_s`);
    a log file or pipe gets a new line each time another 1/`steps` of the total is done.
    """

    def __init__(self, total: int, label: str, *, stream: Optional[TextIO] = None,
                 clock: Callable[[], float] = time.monotonic, quiet_s: float = 2.0, steps: int = 10,
                 redraw_s: float = 0.2, tty: Optional[bool] = None):
        if total < 0:
            raise ValueError(f"progress total must be >= 0; got {total}.")
        self.total = int(total)
        self.label = label
        self.done = 0
        # stderr, as progress bars go: a command's stdout may be its result (describe's JSON).
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.quiet_s = quiet_s
        self.step = max(1, math.ceil(self.total / max(1, steps)))
        self.redraw_s = redraw_s
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.start = clock()
        self._next_mark = self.step
        self._last_draw = None
        self._drawn_width = 0  # characters of the line now on a terminal, 0 if none
        self._closed = False

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    def eta(self) -> Optional[float]:
        """Seconds left at the average rate so far; None before anything is done."""
        if self.done <= 0:
            return None
        return self.elapsed * max(0, self.total - self.done) / self.done

    def line(self) -> str:
        pct = 100 * self.done // self.total if self.total else 100
        text = (f"{PREFIX} {self.label}: {self.done}/{self.total} ({pct}%), "
                f"{format_seconds(self.elapsed)} elapsed")
        eta = self.eta()
        return text + (f", ~{format_seconds(eta)} left" if eta is not None else "")

    def update(self, n: int = 1) -> None:
        """Counts `n` more items done, and prints if it is time to."""
        self.done += n
        now = self.clock()
        if now - self.start < self.quiet_s or self.done >= self.total:
            return  # the final line says it
        if self.tty:
            if self._last_draw is None or now - self._last_draw >= self.redraw_s:
                self._draw(self.line())
                self._last_draw = now
        elif self.done >= self._next_mark:
            self._write(self.line() + "\n")
            self._next_mark = (self.done // self.step + 1) * self.step

    def close(self) -> None:
        """Prints the final line: `label: done/total in 12s`."""
        if self._closed:
            return
        self._closed = True
        text = f"{PREFIX} {self.label}: {self.done}/{self.total} in {format_seconds(self.elapsed)}"
        if self.tty and self._drawn_width:
            self._draw(text)
            self._write("\n")
        else:
            self._write(text + "\n")

    def _draw(self, text: str) -> None:
        self._write("\r" + text.ljust(self._drawn_width))
        self._drawn_width = len(text)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self.tty and self._drawn_width:  # the traceback starts on a line of its own
            self._closed = True
            self._write("\n")


def progress(total: int, label: str, **kwargs) -> Progress:
    """A `Progress` over `total` items; use it as a context manager and call `update(n)`.

        with progress(len(paths), "checking images") as bar:
            for path in paths:
                check(path)
                bar.update()
    """
    return Progress(total, label, **kwargs)

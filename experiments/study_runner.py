"""Trains a study's runs, several at once in worker processes (`kd_study --jobs`).

Why processes: one small student's training step does not keep two cores busy. On a 2-vCPU
machine, one 128x128 run with 2 TensorFlow threads takes 96 ms per step; two runs side by side
with one thread each take 110-130 ms per step each, so two at once train 1.6x the steps per
second. Each worker process gets `os.cpu_count() // jobs` threads (at least 1).

Order: jobs start in the study's order (seed by seed). A seed's runs with teachers share one
teacher cache on disk, so the first of them builds it alone: the others of that seed wait until
the cache is complete (so does its student alone on the views, which reads the views the builder
stored), not for the builder's training, and only one builder builds at a time (teachers not yet
in the store are trained by the first builder, before any other run needs them). The caches a
builder adds are its seed's; they are deleted once every run of that seed is done, unless
`keep_caches`. A worker dies with the study's process (Linux), so a killed study leaves no run
training on.

A worker writes its run's console output to `<output_dir>/logs/<run>.log`; the study prints
one line per finished run. A run that fails stops the study (the runs already finished stay,
and are reused by the next invocation).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import multiprocessing
import os
import shutil
import signal
import sys
import time
from typing import Callable, Dict, List, Optional, Set


def cache_folders(root: str) -> Set[str]:
    return {f for f in os.listdir(root) if os.path.isdir(os.path.join(root, f))} if os.path.isdir(root) else set()


POLL_SECONDS = 2.0  # how often a running builder's caches are checked for completion


def cache_complete(folder: str) -> bool:
    """Whether `folder` holds a finished teacher cache or finished views (their last files)."""
    from keras_endokd.distill.teacher_cache import OUTPUTS_DONE, VIEWS_DONE

    return any(os.path.isfile(os.path.join(folder, name)) for name in (OUTPUTS_DONE, VIEWS_DONE))


_WORKER_THREADS = None  # set in each worker process: TensorFlow threads for its runs


def _init_worker(threads: int) -> None:
    global _WORKER_THREADS
    _WORKER_THREADS = threads
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: SIGTERM to this worker when the study's process dies. Otherwise a killed study's
    workers train their runs to the end, orphaned, into folders the next invocation rewrites."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the study died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def _set_threads() -> None:
    """Before the worker's first TensorFlow op (the settings are fixed from then on)."""
    import tensorflow as tf

    if _WORKER_THREADS and tf.config.threading.get_intra_op_parallelism_threads() != _WORKER_THREADS:
        tf.config.threading.set_intra_op_parallelism_threads(_WORKER_THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(_WORKER_THREADS)


def train_one(cfg, log_path: Optional[str] = None) -> tuple:
    """(metrics, seconds) of `keras_endokd.pipeline.run(cfg)`; the console to `log_path` if given."""
    import keras

    from keras_endokd.pipeline import run

    _set_threads()
    keras.backend.clear_session()
    gc.collect()
    with contextlib.ExitStack() as stack:
        if log_path is not None:
            os.makedirs(os.path.dirname(log_path), exist_ok=True)
            f = stack.enter_context(open(log_path, "w"))
            stack.enter_context(contextlib.redirect_stdout(f))
            stack.enter_context(contextlib.redirect_stderr(f))
        start = time.time()
        metrics = run(cfg)
        return metrics, time.time() - start


def run_jobs(configs: list, uses_cache: List[bool], seeds: list, cache_root: str,
             keep_caches: bool, workers: int, log_dir: str,
             on_done: Callable[[int, dict, float], None], train: Callable = train_one,
             reads_views: Optional[List[bool]] = None) -> None:
    """Trains `configs[i]` (None: reused, nothing to train) for every job i; calls
    `on_done(i, metrics, seconds)` in the parent as each finishes. `workers` 1: in this process.
    `train(cfg, log_path) -> (metrics, seconds)`: `train_one`; in workers, a module-level function.
    `uses_cache[i]`: job i reads its seed's teacher cache (a run with teachers on the views).
    `reads_views[i]`: job i has no teachers but reads the views its seed's cache builder stores
    (the student alone on the views), so it waits for the builder too; it builds (the views
    alone) only where its seed has no run with teachers left to train."""
    pending = [i for i, cfg in enumerate(configs) if cfg is not None]
    left_per_seed: Dict[object, int] = {}
    for i in pending:
        left_per_seed[seeds[i]] = left_per_seed.get(seeds[i], 0) + 1
    builder = {}  # seed -> index of the job that builds its cache (its first run with teachers)
    for i in pending:
        if uses_cache[i]:
            builder.setdefault(seeds[i], i)
    for i in pending:  # a seed with nothing else to train: its student alone stores the views
        if reads_views and reads_views[i]:
            builder.setdefault(seeds[i], i)
    built: Set[object] = set()  # seeds whose caches are complete (or whose builder has finished)
    seed_caches: Dict[object, Set[str]] = {}
    before: Dict[int, Set[str]] = {}  # a building builder -> the cache folders before it started

    def ready(i: int) -> bool:
        seed = seeds[i]
        if seed in built or not (uses_cache[i] or (reads_views and reads_views[i])):
            return True
        return builder[seed] == i and not before  # one builder building at a time

    def check_built(i: int, finished: bool = False) -> None:
        """Builder i's seed is built once every cache folder it added is complete (its run goes
        on training, its seed's other runs start), or when it finishes."""
        if i not in before:
            return
        added = cache_folders(cache_root) - before[i]
        if finished or (added and all(cache_complete(os.path.join(cache_root, f)) for f in added)):
            built.add(seeds[i])
            seed_caches[seeds[i]] = added
            del before[i]

    def finished(i: int, metrics: dict, seconds: float) -> None:
        seed = seeds[i]
        check_built(i, finished=True)
        left_per_seed[seed] -= 1
        on_done(i, metrics, seconds)
        if left_per_seed[seed] == 0 and not keep_caches:
            for folder in seed_caches.get(seed, ()):  # GBs each, and only this study's
                shutil.rmtree(os.path.join(cache_root, folder), ignore_errors=True)

    def started(i: int) -> None:
        if builder.get(seeds[i]) == i:  # the caches it adds are its seed's
            before[i] = cache_folders(cache_root)

    def log_path(i: int) -> Optional[str]:
        return os.path.join(log_dir, os.path.basename(configs[i].output_dir) + ".log") if workers > 1 else None

    if workers <= 1:
        for i in pending:
            started(i)
            finished(i, *train(configs[i], None))
        return
    context = multiprocessing.get_context("spawn")  # a fresh TensorFlow in each worker
    threads = max(1, (os.cpu_count() or 1) // workers)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                initargs=(threads,)) as pool:
        running: Dict[int, concurrent.futures.Future] = {}
        try:
            while pending or running:
                for i in list(pending):  # one at a time: a builder that starts holds back the next
                    if len(running) < workers and ready(i):
                        pending.remove(i)
                        started(i)
                        running[i] = pool.submit(train, configs[i], log_path(i))
                if not running:
                    raise RuntimeError("study_runner: no job can start (a cache builder is missing)")
                done, _ = concurrent.futures.wait(running.values(), timeout=POLL_SECONDS,
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
                for i in list(before):
                    check_built(i)
                for i in [j for j, future in running.items() if future in done]:
                    future = running.pop(i)
                    try:
                        metrics, seconds = future.result()
                    except Exception as err:
                        raise RuntimeError(f"{configs[i].output_dir} failed ({err}); its console output: "
                                           f"{log_path(i)}") from err
                    finished(i, metrics, seconds)
        except BaseException:
            for future in running.values():
                future.cancel()
            raise

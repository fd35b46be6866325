"""Training beyond one device with TensorFlow's `tf.distribute`.

    default        one device (TensorFlow's default strategy)
    mirrored       `MirroredStrategy`: every local GPU, else every logical CPU device
    multi_worker   `MultiWorkerMirroredStrategy`, the cluster described by the TF_CONFIG variable

Keras does the rest: `fit` splits each global batch over the replicas and `Distiller.compute_loss`
divides its terms by the number of replicas before the gradients are summed. XLA stays off: with
`MirroredStrategy` on CPU devices it fails (variables placed on another device), and it gave no
speed-up for networks this small.

Both strategies must be created before TensorFlow runs its first operation (collective ops and
logical devices are configured at start-up), so `make_strategy` is the first thing a run does.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


class StrategyError(ValueError):
    """The strategy cannot be set up as asked (names the flag or variable and what is expected)."""


def split_cpu(num_devices: int) -> None:
    """Splits the CPU into `num_devices` logical devices (tf.distribute without GPUs: tests, CI)."""
    if num_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration()] * num_devices
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError as err:  # TensorFlow already started: only an identical split is fine
        if len(tf.config.list_logical_devices("CPU")) != num_devices:
            raise StrategyError(f"--cpu_devices={num_devices} must be set before TensorFlow starts: {err}")


def make_strategy(name: str = "default", cpu_devices: int = 1) -> tf.distribute.Strategy:
    if name not in STRATEGIES:
        raise StrategyError(f"Unknown --strategy={name!r}; expected one of {', '.join(STRATEGIES)}.")
    split_cpu(cpu_devices)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        # NCCL is GPU-only; on CPU devices all-reduce goes through host memory.
        cross_device = None if gpus else tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross_device)
    if not os.environ.get("TF_CONFIG"):
        raise StrategyError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                         '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                         '"task": {"type": "worker", "index": 0}}), set on every worker.')
    _check_tf_config(os.environ["TF_CONFIG"])
    return tf.distribute.MultiWorkerMirroredStrategy()


def _check_tf_config(raw: str) -> None:
    try:
        config = json.loads(raw)
        workers, task = config["cluster"]["worker"], config["task"]
        assert task["type"] in ("worker", "chief") and isinstance(task["index"], int)
        assert task["type"] == "chief" or 0 <= task["index"] < len(workers)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise StrategyError(f"TF_CONFIG is not a valid cluster description: {raw!r}. Expected "
                         '{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": i}}.') from None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: always, except on non-chief workers.

    Every worker runs the same steps (collective all-reduce needs them all), but only one may
    write the run folder and the teacher store; the others write into a scratch folder.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)


def multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._num_workers > 1


def predict_locally(model, strategy) -> None:
    """Makes `model.predict` run on this worker alone, in the data's order.

    Under `MultiWorkerMirroredStrategy`, Keras' `predict` shards the dataset element-wise over
    the workers and gathers the outputs replica by replica: the rows come back interleaved, not
    in the order of the labels. Inference is cheap, so after training every worker predicts the
    whole split itself (the weights are identical everywhere).
    """
    if multi_worker(strategy):
        model._distribute_strategy = None  # Keras falls back to the default strategy
        model.predict_function = None
        model.test_function = None

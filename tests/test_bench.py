"""experiments.bench_infer end to end on tiny, untrained models (no timing assertions)."""

import importlib.util
import json

from experiments import bench_infer


def test_bench_infer_prints_json_summary(tmp_path, capsys):
    # An empty run folder and teacher folder: every model is built fresh at 32x32.
    bench_infer.benchmark(run_dir=str(tmp_path), teacher_dir=str(tmp_path), image_size=32, runs=5)
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary) == set(bench_infer.JSON_KEYS)
    assert summary["image_size"] == 32
    has_micro = importlib.util.find_spec("tflite_micro") is not None
    for key in bench_infer.JSON_KEYS:
        if key == "arena_bytes" and not has_micro:
            assert summary[key] is None
            continue
        assert isinstance(summary[key], (int, float)) and summary[key] > 0, key
    assert any(line.startswith("mobilenetv3small_int8") for line in lines)


def test_bench_step_times_every_part_of_a_distillation_step():
    from experiments import bench_step

    t = bench_step.step_times("relation", ["tiny_resnet"], image_size=32, batch_size=4, rounds=1)
    assert set(t) == {"student_step_ms", "cached_step_ms", "live_step_ms", "teacher_forwards_ms"}
    assert all(v > 0 for v in t.values())

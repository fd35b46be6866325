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


def test_pair_probe_reports_each_width_and_refuses_bad_flags(capsys):
    """Trains on a few tiny images (learning is what the full-size probe measures). `main` is
    only called with bad flags: a real run turns on op determinism for the whole process."""
    from experiments import pair_probe

    train, test = pair_probe.pair_splits(["polyps", "normal-pylorus"], 8, 4, 32, 0,
                                         pair_probe.parse_difficulty("{}"))
    rows = [pair_probe.probe(width, train, test, epochs=1, learning_rate=0.003, image_size=32, seed=0)
            for width in (1.0, 2.0)]
    assert [row["width"] for row in rows] == [1.0, 2.0] and rows[0]["params"] < rows[1]["params"]
    for row in rows:  # accuracies over 16 train and 8 test images
        assert (row["train_accuracy"] * 16).is_integer() and (row["test_accuracy"] * 8).is_integer()

    assert pair_probe.main(["pair_probe", '--difficulty={"erosion_width": 1}']) == 2
    assert "erosion_width" in capsys.readouterr().err
    assert pair_probe.main(["pair_probe", "--pair=polyps,polyp"]) == 2
    assert "--pair" in capsys.readouterr().err
    assert pair_probe.main(["pair_probe", "--stem_stride=4"]) == 2
    assert "--stem_stride" in capsys.readouterr().err


def test_pair_probe_difficulty_overrides_reach_the_generator():
    from experiments import pair_probe

    difficulty = pair_probe.parse_difficulty('{"erosion_width_range": [0.006, 0.02], "pip_prob": 0}')
    assert difficulty.erosion_width_range == (0.006, 0.02) and difficulty.pip_prob == 0
    train, test = pair_probe.pair_splits(["esophagitis", "normal-z-line"], 3, 2, 32, 0, difficulty)
    assert list(train.labels) == [0, 1] * 3 and list(test.labels) == [0, 1] * 2
    default, _ = pair_probe.pair_splits(["esophagitis", "normal-z-line"], 3, 2, 32, 0,
                                        pair_probe.parse_difficulty("{}"))
    assert (train.images != default.images).any()  # the overrides changed the pixels

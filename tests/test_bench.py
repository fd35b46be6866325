"""experiments.bench_infer, bench_train, bench_step and pair_probe on tiny models (no timing
assertions: what is checked is what the figures are made of)."""

import importlib.util
import json

import pytest

from experiments import bench_infer


def _student_macs_by_hand(s):
    """MACs of the student at S x S, from the layer table of keras_endokd/models/student.py:
    output positions x kernel size x input channels x output channels per layer."""
    conv = lambda hw, k, cin, cout: hw * hw * k * k * cin * cout  # noqa: E731
    dw = lambda hw, c: hw * hw * 9 * c  # noqa: E731
    return (conv(s // 2, 3, 3, 16)                                     # stem      64x64x16
            + dw(s // 4, 16) + conv(s // 4, 1, 16, 32)                 # block1    32x32x32
            + dw(s // 8, 32) + conv(s // 8, 1, 32, 64)                 # block2    16x16x64
            + dw(s // 8, 64) + conv(s // 8, 1, 64, 64)                 # block3    16x16x64
            + dw(s // 16, 64) + conv(s // 16, 1, 64, 128)              # block4    8x8x128
            + dw(s // 16, 128) + conv(s // 16, 1, 128, 128)            # block5    8x8x128
            + dw(s // 16, 128) + conv(s // 16, 1, 128, 104)            # block6    8x8x104
            + 104 * 8)                                                 # logits


def test_student_macs_match_the_layer_table():
    from keras_endokd.models.student import build_student

    assert _student_macs_by_hand(128) == 6_845_248
    assert bench_infer.model_macs(build_student(8, 128)) == 6_845_248
    assert bench_infer.model_macs(build_student(8, 32)) == _student_macs_by_hand(32)


def test_cpu_info_reads_x86_and_arm_flags_and_falls_back(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse4_2 avx2 fma avx512f "
                   "avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert bench_infer.cpu_info(str(x86)) == ("Test CPU", ["sse4_2", "avx2", "fma", "avx512f", "avx512_vnni"])
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n")
    assert bench_infer.cpu_info(str(arm))[1] == ["asimd", "asimddp", "i8mm"]
    model, features = bench_infer.cpu_info(str(tmp_path / "missing"))
    assert features == [] and isinstance(model, str) and model


def test_bench_infer_prints_json_summary(tmp_path, capsys):
    # Empty run and tflite folders: every model is built fresh at 32x32 (no teachers: their rows
    # are the same code as the student's float32 row).
    bench_infer.benchmark(run_dir=str(tmp_path), teacher_dir=str(tmp_path), image_size=32, runs=5,
                          tflite_dir=str(tmp_path), teachers=(), peak_spatial=8,
                          peak_channels=16)
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary) == set(bench_infer.JSON_KEYS) | set(bench_infer.NEW_JSON_KEYS)
    assert summary["image_size"] == 32
    has_micro = importlib.util.find_spec("tflite_micro") is not None
    for key in bench_infer.JSON_KEYS:
        if key == "arena_bytes" and not has_micro:
            assert summary[key] is None
            continue
        assert isinstance(summary[key], (int, float)) and summary[key] > 0, key
    assert summary["student_macs"] == _student_macs_by_hand(32)
    assert summary["mobilenetv3small_macs"] > 4 * summary["student_macs"]  # 2.17M vs 0.43M at 32
    assert summary["mac_ratio_vs_mobilenetv3small"] == pytest.approx(
        summary["mobilenetv3small_macs"] / summary["student_macs"], abs=1e-3)
    assert summary["student_best_ms"] == min(summary["student_int8_ms"], summary["student_float32_ms"])
    assert summary["mobilenetv3small_best_ms"] == min(summary["mobilenetv3small_int8_ms"],
                                                      summary["mobilenetv3small_float32_ms"])
    assert summary["best_vs_mac_ratio_met"] == (
        summary["speedup_best_vs_mobilenetv3small"] >= 0.8 * summary["mac_ratio_vs_mobilenetv3small"])
    assert isinstance(summary["cpu_features"], list)
    assert all(f in bench_infer.CPU_FEATURES for f in summary["cpu_features"])
    assert summary["student_int8_source"].startswith("untrained")
    assert summary["peak_int8_gmacs"] > 0 and summary["peak_float32_gmacs"] > 0
    for name in ("student_int8", "student_float32", "mobilenetv3small_int8",
                 "mobilenetv3small_float32", "peak probe int8", "peak probe float32"):
        assert any(line.startswith(name + " ") for line in lines), name
    verdict = "met (" if summary["best_vs_mac_ratio_met"] else "NOT MET ("
    assert any(line.startswith("Check best vs best") and verdict in line for line in lines)


def test_bench_infer_measures_the_shipped_student_first(tmp_path):
    import shutil

    shipped, run = tmp_path / "tflite", tmp_path / "run"
    shipped.mkdir(), run.mkdir()
    committed = f"{bench_infer.REPO_TFLITE_DIR}/student_int8.tflite"
    with open(committed, "rb") as f:
        committed_bytes = f.read()
    shutil.copy(committed, run / "student_int8.tflite")
    data, source = bench_infer.find_student("int8", 128, str(shipped), str(run))
    assert data == committed_bytes and source.startswith("run ")
    shutil.copy(committed, shipped / "student_int8.tflite")
    (run / "student_int8.tflite").write_bytes(b"not read: the shipped file comes first")
    data, source = bench_infer.find_student("int8", 128, str(shipped), str(run))
    assert data == committed_bytes and source.startswith("shipped ")
    assert bench_infer.find_student("int8", 32, str(shipped), str(tmp_path)) == (None, None)  # 128 only
    assert bench_infer.find_student("float32", 128, str(shipped), str(tmp_path)) == (None, None)


def test_bench_train_speed_mode_prints_the_new_keys(capsys):
    from experiments import bench_train
    from keras_endokd.run_config import RunConfig

    code = bench_train.main(["bench_train", "--speed_only", "--image_size=32", "--batch_size=4",
                             "--teachers=tiny_resnet,tiny_resnet", "--speed_steps=1",
                             "--speed_epochs=2", "--teacher_views=1", "--kd=response",
                             "--input_wait_steps=0", "--nodeterministic"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary) == set(bench_train.JSON_KEYS) | set(bench_train.NEW_JSON_KEYS)
    assert summary["speed_only"] is True and summary["teachers"] == ["tiny_resnet", "tiny_resnet"]
    assert summary["accuracy_live"] is None and summary["accuracy_cached"] is None
    assert summary["main_epochs"] == RunConfig().epochs == 20
    assert summary["cache_build_images_measured"] == 4  # 1 step x 4 images x 1 view
    n = summary["train_images"]
    for arm in ("live", "cached"):  # the input wait is skipped (it retraces each arm's step)
        assert summary[f"images_per_s_{arm}"] > 0 and summary[f"input_wait_share_{arm}"] is None
        assert summary[f"seconds_per_epoch_{arm}"] == pytest.approx(n / summary[f"images_per_s_{arm}"], rel=1e-2)
    assert summary["cache_build_seconds"] > 0
    e = summary["main_epochs"]
    assert summary["speedup_end_to_end"] == pytest.approx(
        summary["seconds_per_epoch_live"] * e
        / (summary["cache_build_seconds"] + summary["seconds_per_epoch_cached"] * e), rel=1e-2)
    assert summary["speedup_end_to_end_ceiling"] == e / 1
    assert summary["speedup_target"] == 10 and summary["speedup_target_met"] == (summary["speedup"] >= 10)
    assert any(line.startswith("speed-up per epoch") and "target >= 10x" in line for line in lines)


def test_bench_train_end_to_end_formula():
    from experiments.bench_train import end_to_end

    # 20 live epochs of 10 s against a 40 s build plus 20 cached epochs of 1 s: 200 / 60.
    assert end_to_end(10.0, 1.0, 40.0, 20) == pytest.approx(200 / 60)


def test_bench_step_times_every_part_of_a_distillation_step():
    from experiments import bench_step

    t = bench_step.step_times("relation", ["tiny_resnet"], image_size=32, batch_size=4, rounds=1)
    assert set(t) == {"student_step_ms", "keras_batchnorm_student_step_ms", "cached_step_ms", "live_step_ms",
                      "teacher_forwards_ms"}
    assert all(v > 0 for v in t.values())
    from keras_endokd.models.fused_batchnorm import FusedBatchNormalization
    from keras_endokd.models.student import build_student

    student = build_student(8, 32)
    unfused = bench_step.with_keras_batchnorm(student)
    kinds = [type(layer).__name__ for layer in unfused.layers]
    assert "FusedBatchNormalization" not in kinds and kinds.count("BatchNormalization") == 13
    assert sum(isinstance(layer, FusedBatchNormalization) for layer in student.layers) == 13
    assert unfused.count_params() == student.count_params()


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


def test_prune_study_pairs_each_target_against_the_teachers_and_names_missing_runs(tmp_path, capsys):
    from experiments import prune_study

    per_seed = {0: {"dense": {"val": 0.9, "test": 0.9}, "teachers": {"val": 0.80, "test": 0.82},
                    "labels": {"val": 0.84, "test": 0.81}},
                1: {"dense": {"val": 0.9, "test": 0.9}, "teachers": {"val": 0.82, "test": 0.80},
                    "labels": {"val": 0.83, "test": 0.83}}}
    summary = prune_study.summarize(per_seed, ["teachers", "labels"])
    assert summary["teachers"]["test"] == pytest.approx(81.0)
    assert summary["labels"]["val_paired_vs_teachers"]["gain_mean"] == pytest.approx(2.5)
    assert summary["labels"]["test_paired_vs_teachers"]["wins"] == 1
    assert "val_paired_vs_teachers" not in summary["teachers"]
    assert prune_study.main(["prune_study", f"--study_dir={tmp_path}", "--methods=none", "--seeds=3"]) != 0
    assert "no finished run none-seed3" in capsys.readouterr().err

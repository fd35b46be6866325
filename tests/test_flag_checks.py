"""Every flag of `python -m keras_endokd.train` and `python -m keras_endokd.export` is checked before
TensorFlow is imported: a bad value is one `error:` paragraph and exit code 2 in well under a
second, not a stack trace after the teachers trained. A flag that has no effect with the others is
a one-line `warning:`, and the run goes on.

Most cases call the commands' own functions in this process (this process has TensorFlow loaded
already, by conftest); the subprocess tests prove that nothing on the error path imports it."""

import inspect
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = pathlib.Path(REPO).parent / "shared" / "data" / "hyper-kvasir" / "official_splits"

# (flags, what the error says); "{tmp}" is an existing folder.
BAD_TRAIN_FLAGS = [
    (["--heads=3"], "--heads=3 cannot split --kd=relation's fusion width of 64 channels into equal heads: "
                    "expected a divisor of 64 (1, 2, 4, 8, 16, 32, 64)"),
    (["--kd=response,relation", "--heads=128"], "--heads=128 cannot split"),
    (["--kd=relation", "--fusion=mean", "--heads=3"], "--heads=3 cannot split"),  # the fusion checks it too
    (["--fusion_warmup_epochs=-1"], "--fusion_warmup_epochs must be 0 (no warm-up) or more, got -1"),
    (["--temperature=0"], "--temperature=0.0 is impossible: the softening temperature"),
    (["--temperature=-2"], "--temperature=-2.0 is impossible"),
    (["--temperature=nan"], "--temperature=nan is impossible"),
    (["--learning_rate=-1"], "--learning_rate=-1.0 is impossible: the student's learning rate must be a number > 0"),
    (["--learning_rate=0"], "--learning_rate=0.0 is impossible"),
    (["--teacher_learning_rate=-1"], "--teacher_learning_rate=-1.0 is impossible: the teachers' learning rate"),
    (["--min_agreement=1.5"], "--min_agreement=1.5 is outside [0, 1]"),
    (["--min_agreement=-0.1"], "--min_agreement=-0.1 is outside [0, 1]"),
    (["--dataset=folder"], "--dataset=folder needs --data_dir: a folder of <class>/<image> sub-folders"),
    (["--dataset=kvasir_v2"], "--dataset=kvasir_v2 needs --data_dir"),
    (["--dataset=hyper_kvasir"], "--dataset=hyper_kvasir needs --data_dir"),
    (["--dataset=folder", "--data_dir={tmp}/missing"], "/missing: no such folder"),
    (["--fold=-1"], "--fold=-1 is impossible"),
    (["--dataset=kvasir_v2", "--data_dir={tmp}", "--fold=2"],
     "--fold=2 does not exist: --dataset=kvasir_v2 is split into 2 folds, so --fold must be 0 or 1"),
    (["--dataset=hyper_kvasir", "--data_dir={tmp}", "--fold=2"],
     "--dataset=hyper_kvasir without --split_file is split into 2 folds"),
    (["--dataset=hyper_kvasir", "--data_dir={tmp}", "--split_file={tmp}/none.csv"], "none.csv: no such file"),
    (["--dataset=folder", "--data_dir={tmp}", "--split_file={tmp}/none.csv"],
     "--split_file applies to --dataset=hyper_kvasir only"),
    (["--kd=feature,fitnets"], "--kd=feature,fitnets names the loss term(s) loss_feature twice"),
    (["--kd=relation,relation"], "loss_fusion_ce, loss_relation, loss_relation_kd, loss_relation_rkd twice"),
    (["--kd=none,response"], "--kd=none cannot be combined"),
    (["--kd=crd"], "Unknown --kd method(s) ['crd']"),
    (["--teacher_weights=imagenet"], "--teacher_weights=imagenet: the teacher(s) mobile_x3, mobile_x2, small_resnet have no "
                                     "ImageNet weights (the default teachers)"),
    (["--teacher_weights=imagenet", "--teachers=resnet50,tiny_resnet"], "the teacher(s) tiny_resnet have no"),
    (["--ce_weight=-1"], "--ce_weight=-1.0 is impossible: a loss weight must be a number >= 0"),
    (["--relation_rkd_weight=inf"], "--relation_rkd_weight=inf is impossible"),
    (["--kd=none", "--ce_weight=0"], "--ce_weight=0 with --kd=none leaves the student no loss"),
    (["--student_loss_weight=1.5"], "--student_loss_weight=1.5 is impossible: it is w in w * CE + (1 - w) * "
                                    "distillation, a number from 0 to 1"),
    (["--student_loss_weight=0.3", "--ce_weight=1"], "--student_loss_weight=0.3 and --ce_weight=1.0 both set"),
    (["--teacher_taps=a,b,c,d"], "--teacher_taps=a,b,c,d: expected one to three layer names, shallow to deep"),
    (["--kd=relation", "--teacher_taps=conv4_block6_out"], "but mobile_x3, mobile_x2, small_resnet come from the registry"),
    (["--kd=fitnets", "--student_taps=block3"], "--student_taps=block3 names feat_3 only, but --kd=fitnets also "
                                                "reads feat_2: give 2 layer names"),
    (["--kd=attention_transfer", "--student_taps=b2,b3"], "also reads feat_1: give 3 layer names"),
    (["--seed=-1"], "--seed=-1 is impossible: expected an integer from 0 to 4294967295"),
    (["--output_dir="], "--output_dir is empty"),
    (["--overwrite", "--resume"], "--overwrite and --resume contradict each other"),
    # The checks that were there before.
    (["--image_size=8"], "--image_size=8 is impossible"),
    (["--sparsity=1"], "--sparsity=1.0 is outside [0, 1)"),
    (["--int8_max_bytes=-1"], "--int8_max_bytes must be 0"),
    (["--epochs=0"], "--epochs must be at least 1, got 0"),
    (["--heads=0"], "--heads must be at least 1, got 0"),
    (["--teacher_views=0"], "--teacher_views must be at least 1"),
    (["--train_inputs=fresh", "--teacher_cache=disk"], "--teacher_cache=disk cannot apply"),
]


def _flags(flags, tmp_path):
    return [f.replace("{tmp}", str(tmp_path)) for f in flags]


def _parse(module, *flags):
    module.FLAGS.unparse_flags()
    module.FLAGS([module.__name__, *flags])


def _warnings(*flags):
    from keras_endokd import train

    _parse(train, *flags)
    return train.flag_warnings(train.check_flags())


@pytest.mark.parametrize("flags, message", BAD_TRAIN_FLAGS, ids=[" ".join(f) for f, _ in BAD_TRAIN_FLAGS])
def test_a_bad_train_flag_is_one_error_paragraph(tmp_path, capsys, flags, message):
    from keras_endokd import train

    # --output_dir first: a case's own (empty) --output_dir overrides it.
    assert train.main(["train", f"--output_dir={tmp_path / 'run'}", *_flags(flags, tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message.replace("{tmp}", str(tmp_path)) in err, err
    assert not (tmp_path / "run").exists()


def test_bad_values_raise_usage_error_without_importing_tensorflow(tmp_path):
    """config_from_flags, on every bad value above, in a fresh process: TensorFlow stays out."""
    cases = [_flags(flags, tmp_path) for flags, _ in BAD_TRAIN_FLAGS]
    code = textwrap.dedent("""
        import json, sys
        from keras_endokd import train
        from keras_endokd.cli import UsageError
        refused = []
        for flags in json.loads(sys.argv[1]):
            train.FLAGS.unparse_flags()
            train.FLAGS(["train", *flags])
            try:
                train.config_from_flags()
            except UsageError:
                refused.append(flags)
        print(json.dumps({"refused": refused, "imported": sorted(
            m for m in ("tensorflow", "keras", "tf_keras") if m in sys.modules)}))
    """)
    result = subprocess.run([sys.executable, "-c", code, json.dumps(cases)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["refused"] == cases
    assert report["imported"] == []


def _command(module, *flags):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", module, *flags], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.splitlines()
    imported = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
    return result, [line for line in lines if not line.startswith("import time:")], imported, \
        time.monotonic() - start


@pytest.mark.parametrize("flags, message", [
    (["--heads=3"], "error: --heads=3 cannot split"),
    (["--temperature=0"], "error: --temperature=0.0 is impossible"),
    (["--dataset=folder"], "error: --dataset=folder needs --data_dir"),
    (["--dataset=kvasir_v2", "--data_dir={tmp}", "--fold=2"], "error: --fold=2 does not exist"),
])
def test_the_train_command_refuses_a_bad_flag_at_once(tmp_path, flags, message):
    result, stderr, imported, seconds = _command("keras_endokd.train", *_flags(flags, tmp_path),
                                                 f"--output_dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(stderr) == 1 and stderr[0].startswith(message), stderr  # one paragraph, no traceback
    assert not imported & {"tensorflow", "keras"}
    assert seconds < 10  # ~0.3 s on an idle machine; TensorFlow's import alone takes longer than that
    assert not (tmp_path / "run").exists()


@pytest.fixture
def run_dir(tmp_path):
    """What export's checks look at: a folder with student.keras and config.json."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "student.keras").write_bytes(b"")
    (folder / "config.json").write_text(json.dumps({"sparsity": 0.0}))
    return folder


def test_the_export_command_refuses_a_bad_flag_at_once(run_dir):
    result, stderr, imported, seconds = _command("keras_endokd.export", f"--run_dir={run_dir}",
                                                 "--min_agreement=1.5")
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(stderr) == 1 and stderr[0].startswith("error: --min_agreement=1.5 is outside [0, 1]"), stderr
    assert not imported & {"tensorflow", "keras"} and seconds < 10


@pytest.mark.parametrize("flags, message", [
    (["--min_agreement=nan"], "--min_agreement=nan is outside [0, 1]"),
    (["--sparsity=-0.5"], "--sparsity=-0.5 is outside [0, 1)"),
    (["--fine_tune_epochs=0"], "--fine_tune_epochs must be at least 1"),
    (["--qat", "--per_tensor"], "--per_tensor and --qat do not combine"),
    (["--int8_max_bytes=-5"], "--int8_max_bytes must be 0"),
])
def test_a_bad_export_flag_is_one_error_paragraph(run_dir, capsys, flags, message):
    from keras_endokd import export

    assert export.main(["export", f"--run_dir={run_dir}", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_a_flag_without_effect_warns_and_the_flags_still_parse(tmp_path, capsys):
    from keras_endokd import train

    _parse(train, "--kd=none", "--temperature=2", f"--output_dir={tmp_path / 'run'}")
    cfg = train.config_from_flags()
    assert (cfg.kd, cfg.temperature) == ("none", 2.0)
    assert capsys.readouterr().err == ("warning: --temperature=2.0 has no effect: --kd=none has no teachers "
                                       "whose logits it would soften.\n")


@pytest.mark.parametrize("flags, expected", [
    ([], []),
    # test_reliability's end-to-end run: nothing to warn about.
    (["--kd=response,relation", "--heads=2", "--epochs=6", "--sparsity=0", "--image_size=32", "--teacher_epochs=1",
      "--teachers=tiny_resnet", "--teacher_views=2", "--min_agreement=0"], []),
    (["--kd=none", "--teacher_views=2"], []),  # the views of --train_inputs=views, teachers or not
    (["--kd=none", "--teacher_cache=disk", "--teacher_dir=T"], []),  # the views, shared on disk
    (["--kd=none", "--teacher_cache=memory", "--teacher_dir=T"],
     ["--teacher_dir=T, --teacher_cache=memory have no effect: --kd=none"]),
    (["--kd=none", "--train_inputs=fresh", "--teacher_views=2"], ["--teacher_views=2 has no effect: --kd=none"]),
    (["--kd=none", "--teachers=tiny_resnet", "--teacher_epochs=3", "--teacher_cache=off", "--noshipped_teachers"],
     ["--teachers=tiny_resnet, --teacher_epochs=3, --noshipped_teachers, --teacher_cache=off have no effect: "
      "--kd=none trains the student alone"]),
    (["--kd=feature", "--temperature=3"], ["--temperature=3.0: --kd=feature has no logit term"]),
    (["--kd=response", "--temperature=3"], []),
    (["--kd=relation", "--temperature=3"], []),
    (["--kd=response", "--fusion=mean", "--heads=2", "--norelation_centre"],
     ["--fusion=mean, --heads=2, --norelation_centre have no effect: --kd=response does not include relation"]),
    (["--kd=feature", "--fusion_warmup_epochs=2"],
     ["--fusion_warmup_epochs=2 has no effect: --kd=feature does not include relation"]),
    (["--kd=relation", "--fusion=confidence", "--heads=2"], ["--heads=2 has no effect: --fusion=confidence"]),
    (["--kd=relation", "--fusion=attention", "--heads=8"], []),
    (["--kd=response", "--relation_kd_weight=1", "--response_weight=2"],
     ["--relation_kd_weight=1.0 has no effect: --kd=response has no loss_relation_kd term"]),
    (["--kd=fitnets", "--attention_weight=1", "--feature_weight=1"], ["--attention_weight=1.0 has no effect"]),
    (["--kd=feature", "--attention_weight=1", "--feature_weight=1"], []),
    (["--kd=rkd,relation", "--rkd_weight=1", "--fusion_ce_weight=0", "--relation_rkd_weight=0.1"], []),
    (["--kd=relation", "--rkd_weight=1"], ["--rkd_weight=1.0 has no effect: --kd=relation has no loss_rkd term"]),
    (["--train_inputs=fresh", "--teacher_views=3", "--teacher_cache=off"],
     ["--teacher_cache=off, --teacher_views=3 have no effect: --train_inputs=fresh"]),
    (["--data_dir=/", "--fold=1"], ["--data_dir=/ has no effect: --dataset=synthetic",
                                    "--fold=1 has no effect: --dataset=synthetic"]),
    (["--noexport", "--per_tensor", "--min_agreement=0.5", "--sparsity=0.2"],
     ["--per_tensor, --min_agreement=0.5 have no effect: --noexport"]),
    (["--kd=none", "--student_loss_weight=0.3"], ["--student_loss_weight=0.3 has no effect: with --kd=none"]),
    (["--kd=response", "--student_loss_weight=1"], ["--student_loss_weight=1.0 gives every distillation term"]),
    (["--kd=response", "--teacher_taps=x", "--student_taps=y"],
     ["--teacher_taps has no effect: --kd=response reads no feature layer",
      "--student_taps has no effect: --kd=response reads no feature layer"]),
])
def test_flags_without_effect_get_one_warning_line(flags, expected):
    warnings = _warnings(*flags)
    assert len(warnings) == len(expected), warnings
    for line, start in zip(warnings, expected):
        assert line.startswith(start) and "\n" not in line, line


def test_saved_teachers_make_the_training_flags_moot(tmp_path):
    saved = tmp_path / "teacher.keras"
    saved.write_bytes(b"")
    assert _warnings(f"--teachers={saved}", "--teacher_epochs=2") == [
        "--teacher_epochs=2 has no effect: every --teachers entry is a saved .keras teacher, so none is "
        "trained or stored here."]


def test_export_warns_of_flags_without_effect(run_dir):
    from keras_endokd import export

    _parse(export, f"--run_dir={run_dir}", "--fine_tune_epochs=2", "--int8_max_bytes=1000", "--per_tensor")
    assert export.flag_warnings(export.check_flags()) == [
        "--int8_max_bytes=1000 has no effect: --per_tensor gives every layer one weight scale, whatever the size.",
        "--fine_tune_epochs=2 has no effect: the run's sparsity is 0 and no --qat, so nothing is fine-tuned."]
    _parse(export, f"--run_dir={run_dir}", "--fine_tune_epochs=2", "--sparsity=0.5", "--qat")
    assert export.flag_warnings(export.check_flags()) == []


@pytest.mark.parametrize("folds", [2, 5])
def test_a_split_file_decides_the_folds(tmp_path, folds):
    from keras_endokd import train
    from keras_endokd.cli import UsageError

    split_file = SPLITS / f"{folds}_fold_split.csv"
    if not split_file.is_file():
        pytest.skip(f"official split file not found: {split_file} (no shared data)")
    flags = ["--dataset=hyper_kvasir", f"--data_dir={tmp_path}", f"--split_file={split_file}"]
    _parse(train, *flags, f"--fold={folds - 1}")
    train.check_flags()
    _parse(train, *flags, f"--fold={folds}")
    with pytest.raises(UsageError, match=f"has {folds} folds, so --fold must be 0 (or|to) {folds - 1}"):
        train.check_flags()
    bad = tmp_path / "bad.csv"
    bad.write_text("file-name;class-name\n")
    _parse(train, *flags[:2], f"--split_file={bad}")
    with pytest.raises(UsageError, match="--split_file: .*bad.csv line 1: header"):
        train.check_flags()


def test_the_checks_copies_follow_the_library(tmp_path):
    """The checks repeat library constants (their modules import TensorFlow): keep them equal."""
    from keras_endokd import train
    from keras_endokd.data import hyper_kvasir, kvasir
    from keras_endokd.distill.registry import KD_METHODS, build_losses
    from keras_endokd.distill.fusion_distillation import FusionDistillation
    from keras_endokd.models import teachers

    assert train.KD_METHODS == tuple(KD_METHODS) == tuple(train.KD_TERMS)
    for name in KD_METHODS:
        terms = [t for loss in build_losses(name) for t in loss.loss_names]
        assert terms == [f"loss_{t}" for t in train.KD_TERMS[name]], name
    assert sorted(train.WEIGHT_TERMS) == sorted({t for terms in train.KD_TERMS.values() for t in terms})
    assert all(f"{t}_weight" in train.FLAGS for t in train.WEIGHT_TERMS)
    assert train.TEACHER_NAMES == teachers.TEACHER_NAMES
    assert train.IMAGENET_TEACHERS == tuple(sorted(teachers._APPLICATIONS))
    assert train.DEFAULT_TEACHERS == teachers.DEFAULT_TEACHERS
    assert train.FUSION_WIDTH == inspect.signature(FusionDistillation).parameters["width"].default
    assert train.DEFAULT_FOLDS["kvasir_v2"] == inspect.signature(kvasir.load).parameters["num_folds"].default
    # Hyper-Kvasir without a split file: a tiny tree (file contents are not read here).
    for finding in ("a", "b"):
        folder = tmp_path / "labeled-images" / "lower-gi-tract" / "findings" / finding
        folder.mkdir(parents=True)
        for i in range(6):
            (folder / f"{finding}{i}.jpg").write_bytes(b"x")
    last = train.DEFAULT_FOLDS["hyper_kvasir"] - 1
    hyper_kvasir.load(str(tmp_path), fold=last)
    with pytest.raises(ValueError, match="fold must be an integer"):
        hyper_kvasir.load(str(tmp_path), fold=last + 1)


@pytest.mark.parametrize("flags, expected", [
    ([], 0.5),  # CE + sum of the terms, halved: the same training with Adam
    (["--student_loss_weight=0.2"], 0.2),
    (["--ce_weight=3"], 0.75),  # 3 CE + terms = 4 (0.75 CE + 0.25 terms)
    (["--ce_weight=0"], 0.0),
])
def test_the_legacy_ce_weight_maps_onto_the_convex_weight(tmp_path, flags, expected):
    from keras_endokd import train

    _parse(train, *flags, f"--output_dir={tmp_path / 'run'}")
    assert train.config_from_flags().student_loss_weight == pytest.approx(expected)


def _saved_teacher(path, layers):
    """A .keras file as far as the flag checks read it: its config.json (a zip member)."""
    import zipfile

    config = {"class_name": "Functional", "config": {"layers": [{"name": n, "config": {"name": n}} for n in layers]}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
    return str(path)


def test_a_saved_teachers_layer_names_are_checked_before_tensorflow(tmp_path):
    from keras_endokd import train
    from keras_endokd.cli import UsageError

    teacher = _saved_teacher(tmp_path / "resnet.keras", ["input_layer", "conv3_block4_out", "conv4_block6_out",
                                                          "avg_pool", "predictions"])
    base = [f"--teachers={teacher}", f"--output_dir={tmp_path / 'run'}"]
    _parse(train, *base, "--kd=relation", "--teacher_taps=conv4_block6_ou")
    with pytest.raises(UsageError, match="has no layer 'conv4_block6_ou'; its closest layer names are "
                                         "conv4_block6_out"):
        train.check_flags()
    _parse(train, *base, "--kd=relation,fitnets", "--teacher_taps=conv3_block4_out,conv4_block6_out")
    cfg = train.config_from_flags()
    assert cfg.teacher_taps == ("conv3_block4_out", "conv4_block6_out") and cfg.student_taps is None


def test_the_tap_checks_copies_follow_the_library():
    from keras_endokd import distill_flags
    from keras_endokd.distill import registry
    from keras_endokd.models import taps

    assert distill_flags.METHOD_TAPS == registry.METHOD_TAPS
    assert set(registry.METHOD_TAPS) == set(registry.KD_METHODS)
    assert distill_flags.FEATURE_TAPS == taps.FEATURE_TAPS
    for given in (["c"], ["b", "c"], ["a", "b", "c"]):
        mapped = distill_flags.mapped_taps(given, "teacher_taps")
        assert {k: v for k, v in registry.layer_map(given).items() if k in mapped} == mapped

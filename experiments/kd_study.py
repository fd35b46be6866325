"""python -m experiments.kd_study: the seed paper's comparison of distillation methods, in one command.

Gammulle et al. 2023 ("Learning Through Guidance: Knowledge Distillation for Endoscopic Image
Classification") compare, on one dataset, the teachers, the student alone, response-based,
feature-based and relation-based distillation (their teacher fusion against mean and
confidence-weighted fusion), and ablate the fusion's attention heads. This script runs, every arm on the same input stream (see experiments/README.md, "The protocol"):

- each teacher (the shipped ones on the embedded data; trained once elsewhere; no std);
- over `--seeds` (`study_methods.MAIN_METHODS`, or those `--methods` names): the student alone
  on the views and on fresh augmentation, response (Hinton KD), feature (FitNets + attention
  transfer), relation with mean (AVER) and multi-head-attention fusion (the headline); each paired
  by seed against the better student-alone arm by validation accuracy;
- over `--ablation_seeds`: confidence-weighted fusion (CA-MKD), response + feature + relation,
  the headline recipe's ablations (`study_methods.VARIANTS`), and the attention heads
  (`--heads_grid`) and temperature (`--temperature_grid`, on `--temperature_kd`) grids.

How, and why:
- seeds: only `RunConfig.seed` varies (student initialisation, shuffling, augmentation, the
  teacher cache's augmented views). `data_seed` and `teacher_seed` are fixed, so every run has the
  same split and the same teachers: the spread over seeds is the student's, not the data's.
- teachers are trained once and reused from `--teacher_dir` (keras_endokd's TeacherStore), and
  their outputs (every tap) are cached on disk (`teacher_cache="disk"`, `cache_all_taps`), once per
  seed, then reused by every run with that seed. Runs start seed by seed, `--jobs` (2) at once in
  worker processes (experiments.study_runner: one small run does not keep two cores busy); a
  seed's caches (GBs) are deleted once its runs are done, unless `--keep_caches`.
- the main runs of `--export_seeds` are exported (pruned int8, checked in LiteRT) for their int8
  accuracy; the others skip the export. Every student row has the same architecture, so its
  int8 size and latency are measured once: the first seed's headline student, converted to full-int8 TFLite
  with representative training images, timed with `keras_endokd.deploy.litert.latency_ms` (median
  `invoke()` at batch 1, 1 thread). Each teacher is measured the same way (float32 if its int8
  conversion fails; the table says which).
- resumable: a run folder whose config.json matches and that holds metrics.json is reused; one
  that matches without metrics.json (interrupted) is resumed from its epoch checkpoint; one with
  other settings is overwritten. An interrupted study redoes only its unfinished runs.
- Hyper-Kvasir follows its official 2-fold protocol (`--folds=0,1`: train on one fold, test on
  the other, both ways); each seed's metrics are the mean over folds.

Outputs in --output_dir: results.md, results.json (settings and every run's metrics),
accuracy_vs_params.png, accuracy_vs_latency.png, confusion_matrices/<method>.png, runs/<run>/,
teachers/ (trained teachers and caches), deploy/ (the measured .tflite files). The last line
printed is one JSON object with the headline figures.

    python -m experiments.kd_study [--epochs=10] [--seeds=0,1,2] [--quick]
    python -m experiments.kd_study --dataset=kvasir_v2 --data_dir=DIR
    python -m experiments.kd_study --dataset=hyper_kvasir --data_dir=DIR [--split_file=CSV]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from keras_endokd.cli import UsageError, fail, parse_flags  # noqa: E402

# The study's own FlagValues: it imports experiments.bench_infer, whose flags live in absl's global
# FLAGS (--teacher_dir, --image_size there too), and tests call main() in their process.
FLAGS = flags.FlagValues()
_F = {"flag_values": FLAGS}
flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "kvasir_v2", "hyper_kvasir", "folder"],
                  "Dataset; real ones need --data_dir.", **_F)
flags.DEFINE_string("data_dir", None, "Dataset folder (real datasets).", **_F)
flags.DEFINE_string("split_file", None, "Hyper-Kvasir official split CSV (2_fold_split.csv).", **_F)
flags.DEFINE_list("folds", None, "Held-out test folds, metrics averaged per seed (default: 0,1 for "
                  "hyper_kvasir, the official 2-fold protocol; 0 otherwise).", **_F)
flags.DEFINE_boolean("crop_border", False, "Crop the endoscope's black border before resizing.", **_F)
flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Training seeds of the main comparison.", **_F)
flags.DEFINE_list("methods", None, "The main methods to run over --seeds, by run name (default: all of "
                  "study_methods.MAIN_METHODS); the two student-alone arms and the headline always run.", **_F)
flags.DEFINE_list("ablation_seeds", ["0"], "Training seeds of the ablations (empty: none).", **_F)
flags.DEFINE_list("ablations", None, "The ablation methods to run over --ablation_seeds, by run name "
                  "(default: relation-confidence, response+feature+relation-attention and every "
                  "relation-attention-<variant>; relation-mean-<variant> may be named too).", **_F)
# The train command's schedule and views: the study measures what a user of the main job gets.
flags.DEFINE_integer("epochs", 20, "Student epochs of every run.", **_F)
flags.DEFINE_integer("teacher_epochs", 48, "Epochs of each teacher (trained once).", **_F)
flags.DEFINE_list("teachers", ["mobile_x3", "mobile_x2", "small_resnet"], "Teacher registry names.", **_F)
flags.DEFINE_integer("image_size", 128, "Square input size, pixels.", **_F)
flags.DEFINE_integer("batch_size", 32, "Batch size.", **_F)
flags.DEFINE_integer("teacher_views", 4, "Augmented views per training image: the input stream every "
                     "views arm shares (and the teacher cache's).", **_F)
flags.DEFINE_integer("data_seed", 0, "Seed of the data split (and synthetic images), fixed.", **_F)
flags.DEFINE_integer("teacher_seed", 0, "Seed of the teachers' training, fixed.", **_F)
# One value each by default (the headline's: no extra run) to fit the 60-minute budget; e.g.
# --heads_grid=1,2,4,8 --temperature_grid=1,2,4,8 for the paper's ablations.
flags.DEFINE_list("heads_grid", ["4"], "Attention heads ablation.", **_F)
flags.DEFINE_list("temperature_grid", ["4"], "Temperature ablation.", **_F)
flags.DEFINE_string("temperature_kd", "relation",
                    "Method of the temperature ablation (must contain response or relation, the "
                    "terms the temperature softens).", **_F)
flags.DEFINE_boolean("deterministic", False, "TensorFlow op determinism in every run: the same figures "
                     "on a rerun on the same machine, about 20% slower. Off by default: the pairing "
                     "needs identical input streams (seeded either way), not bit-identical kernels.", **_F)
flags.DEFINE_integer("latency_runs", 200, "Timed invokes per latency measurement.", **_F)
flags.DEFINE_integer("representative", 256, "Representative training images for int8 (>= 100).", **_F)
flags.DEFINE_string("output_dir", "runs/kd_study", "Study folder (runs/kd_study_quick with --quick).", **_F)
flags.DEFINE_string("teacher_dir", None, "Trained teachers and caches (default OUTPUT_DIR/teachers).", **_F)
flags.DEFINE_integer("verbose", 0, "Keras fit verbosity of each run (0, 1 or 2).", **_F)
flags.DEFINE_list("export_seeds", ["0"], "Seeds whose main-table runs are also exported (pruned, int8, "
                  "checked in LiteRT), so the table shows whether each method's gain survives deployment.", **_F)
flags.DEFINE_boolean("keep_caches", False, "Keep each seed's teacher caches after its runs (GBs); by "
                     "default the caches this study built are deleted once a seed is done.", **_F)
flags.DEFINE_integer("jobs", 2, "Runs trained at once, each in its own worker process with "
                     "cpu_count // jobs TensorFlow threads (1: one at a time, in this process). Two "
                     "small runs side by side use 2 cores better than one run with 2 threads.", **_F)
flags.DEFINE_boolean("quick", False, "CI mode: tiny teachers, 32x32 images, few epochs, 2 seeds, small "
                     "ablation grid; flags given explicitly still win.", **_F)

# --quick: defaults for every flag not given on the command line.
QUICK = {"export_seeds": [], "teachers": ["tiny_resnet", "small_plaincnn"], "image_size": 32, "epochs": 2,
         "teacher_epochs": 1, "seeds": ["0", "1"], "ablation_seeds": ["0"], "heads_grid": ["2", "4"],
         "temperature_grid": ["1", "4"], "teacher_views": 1, "latency_runs": 20,
         "representative": 100, "output_dir": "runs/kd_study_quick"}

from experiments.study_methods import (  # noqa: E402,F401
    ABLATIONS, BASELINES, DEFAULT_ABLATIONS, HEADLINE, HEADS, MAIN_METHODS, OTHER_METHODS, RECIPE_ABLATIONS, TEMPERATURE,
    Method)


@dataclasses.dataclass
class Study:
    """The resolved settings of one study (flags, after --quick)."""

    dataset: str
    data_dir: Optional[str]
    split_file: Optional[str]
    folds: List[int]
    crop_border: bool
    seeds: List[int]
    ablation_seeds: List[int]
    epochs: int
    teacher_epochs: int
    teachers: List[str]
    image_size: int
    batch_size: int
    teacher_views: int
    data_seed: int
    teacher_seed: int
    heads_grid: List[int]
    temperature_grid: List[float]
    temperature_kd: str
    latency_runs: int
    representative: int
    output_dir: str
    teacher_dir: str
    verbose: int
    quick: bool
    keep_caches: bool = False
    export_seeds: List[int] = dataclasses.field(default_factory=list)
    deterministic: bool = False
    # Run names of the ablation methods (study_methods.ABLATIONS).
    ablations: List[str] = dataclasses.field(default_factory=lambda: [m.name for m in DEFAULT_ABLATIONS])
    jobs_at_once: int = 1  # runs trained at once, each in its own process (1: in this process)
    # Run names of the main methods (study_methods.MAIN_METHODS; the baselines and headline always).
    methods: List[str] = dataclasses.field(default_factory=lambda: [m.name for m in MAIN_METHODS])

    def main_methods(self) -> List[Method]:
        return [m for m in MAIN_METHODS if m.name in self.methods or m in (*BASELINES, HEADLINE)]

    def ablation_methods(self) -> List[Method]:
        return [ABLATIONS[name] for name in self.ablations]

    def heads_methods(self) -> List[Method]:
        return [Method("relation", "attention", heads=h) for h in self.heads_grid]

    def temperature_methods(self) -> List[Method]:
        return [Method(self.temperature_kd, "attention", temperature=t) for t in self.temperature_grid]

    def jobs(self) -> list:
        """(method, seed, fold) of every run, each once, seed by seed (a seed's teacher caches are
        not needed once its runs are done): main methods, then ablations."""
        ablations = self.ablation_methods() + self.heads_methods() + self.temperature_methods()
        jobs = []
        for seed in dict.fromkeys(self.seeds + self.ablation_seeds):
            methods = (self.main_methods() if seed in self.seeds else []) + (
                ablations if seed in self.ablation_seeds else [])
            for method in dict.fromkeys(methods):
                jobs += [(method, seed, fold) for fold in self.folds]
        return jobs

    def run_dir(self, method: Method, seed: int, fold: int) -> str:
        suffix = f"-fold{fold}" if self.folds != [0] else ""
        return os.path.join(self.output_dir, "runs", f"{method.name}-seed{seed}{suffix}")

    def run_config(self, method: Method, seed: int, fold: int):
        from keras_endokd.run_config import RunConfig

        overrides = method.overrides()
        return RunConfig(
            **overrides,
            kd=method.kd, fusion=method.fusion, heads=method.heads, temperature=method.temperature,
            dataset=self.dataset, data_dir=self.data_dir, split_file=self.split_file, fold=fold,
            crop_border=self.crop_border, teachers=tuple(self.teachers), teacher_dir=self.teacher_dir,
            image_size=self.image_size, epochs=self.epochs, teacher_epochs=self.teacher_epochs,
            batch_size=self.batch_size, seed=seed, data_seed=self.data_seed,
            teacher_seed=self.teacher_seed, output_dir=self.run_dir(method, seed, fold),
            teacher_cache="disk", cache_all_taps=True, teacher_views=self.teacher_views,
            train_inputs=method.inputs, export=seed in self.export_seeds and method in self.main_methods(),
            min_agreement=0.0, deterministic=self.deterministic, verbose=self.verbose,
            report=False)  # the study reports across runs (results.md); a run's own figures are not read


def log(message: str) -> None:
    print(f"[kd_study] {message}", flush=True)


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def prepare(cfg):
    """(config to run, None) or (cfg, metrics.json of the finished run to reuse), after
    `run_folder.state`: a finished run is reused, an interrupted one resumed from its last epoch
    checkpoint, another run in the folder replaced."""
    from keras_endokd import run_folder

    found = run_folder.state(cfg.output_dir, dataclasses.asdict(cfg), defaults=dataclasses.asdict(type(cfg)()))
    if found == "finished":
        return cfg, _read_json(os.path.join(cfg.output_dir, "metrics.json"))
    return dataclasses.replace(cfg, resume=found == "interrupted", overwrite=found == "other"), None


def execute(study: Study) -> list:
    """Runs (or reuses) every job, `study.jobs_at_once` at a time (experiments.study_runner);
    returns one record per run, in job order."""
    from experiments.study_runner import run_jobs
    from keras_endokd import atomic_files

    jobs, fresh_seconds = study.jobs(), []
    prepared = [prepare(study.run_config(method, seed, fold)) for method, seed, fold in jobs]
    records: list = [None] * len(jobs)
    start = time.time()

    def record(i: int, metrics: dict, seconds: Optional[float], reused: bool) -> None:
        method, seed, fold = jobs[i]
        cfg = prepared[i][0]
        if not reused:
            fresh_seconds.append(seconds)
            atomic_files.write_json(os.path.join(cfg.output_dir, "study_timing.json"),
                                    {"seconds": seconds, "resumed": cfg.resume, "jobs_at_once": study.jobs_at_once})
        left = sum(r is None for r in records) - 1
        eta = (f", about {left * (time.time() - start) / len(fresh_seconds) / 60:.0f} min left"
               if fresh_seconds and left else "")
        how = "reused" if reused else f"{'resumed, ' if cfg.resume else ''}{seconds:.0f}s"
        where = f"seed {seed}" + (f" fold {fold}" if study.folds != [0] else "")
        log(f"{len(jobs) - left}/{len(jobs)} {method.name} {where}: accuracy "
            f"{metrics['student']['accuracy']:.3f} ({how}{eta})")
        keep = ("accuracy", "val_accuracy", "macro_precision", "macro_recall", "macro_f1", "mcc",
                "confusion_matrix", "params", "class_names", "num_images")
        records[i] = {"method": method.name, **dataclasses.asdict(method), "seed": seed, "fold": fold,
                      "run_dir": cfg.output_dir, "reused": reused, "seconds": seconds,
                      "student": {k: metrics["student"][k] for k in keep},
                      "protocol": metrics.get("protocol"),
                      "deploy": _export_figures(cfg.output_dir) if cfg.export else None,
                      "training": metrics.get("training"),
                      "teachers": [t.get("key") for t in metrics.get("teachers", [])]}

    to_train = []
    for i, (cfg, metrics) in enumerate(prepared):
        timing_path = os.path.join(cfg.output_dir, "study_timing.json")
        if metrics is not None:
            record(i, metrics, _read_json(timing_path)["seconds"] if os.path.isfile(timing_path) else None, True)
            to_train.append(None)
        else:
            if os.path.exists(timing_path):
                os.remove(timing_path)
            to_train.append(cfg)
    run_jobs(to_train, uses_cache=[method.uses_cache for method, _, _ in jobs],
             reads_views=[method.reads_views for method, _, _ in jobs],
             seeds=[seed for _, seed, _ in jobs], cache_root=os.path.join(study.teacher_dir, "cache"),
             keep_caches=study.keep_caches, workers=study.jobs_at_once,
             log_dir=os.path.join(study.output_dir, "logs"),
             on_done=lambda i, metrics, seconds: record(i, metrics, seconds, False))
    return records


def _export_figures(run_dir: str) -> Optional[dict]:
    """The pruned int8 export's test figures (export_report.json), or None if it failed."""
    path = os.path.join(run_dir, "export_report.json")
    if not os.path.isfile(path):
        return None
    report = _read_json(path)
    checks = report.get("checks", {})
    if "int8" not in checks:
        return None
    return {"int8_accuracy": checks["int8"]["accuracy"], "float32_accuracy": checks["float32"]["accuracy"],
            "int8_bytes": report["conversion"]["sizes"]["student_int8.tflite"]["bytes"],
            "sparsity": report["prune"]["sparsity"]["pruned_layers"], "status": report.get("status")}


def evaluate_teachers(study: Study) -> tuple:
    """Every teacher's test metrics per fold (from the store: trained already by the runs).

    Returns ([{name, path, params, train_seconds, fold, scores}], fold-0 DatasetSource)."""
    from keras_endokd.data import load_dataset
    from keras_endokd.classification_metrics import classification_metrics
    from keras_endokd.run_config import make_datasets, predict_labels
    from keras_endokd.teacher_stage import obtain_teachers

    rows, first_source = [], None
    for fold in study.folds:
        cfg = study.run_config(HEADLINE, study.seeds[0], fold)
        source = load_dataset(cfg.dataset, cfg.data_dir, cfg.split_file, fold, cfg.resolved_data_seed(),
                              cfg.image_size)
        first_source = first_source or source
        datasets = make_datasets(cfg, source)
        models, infos = obtain_teachers(cfg, source, datasets)
        seen = set()
        for model, info in zip(models, infos):
            if info["name"] in seen:  # a teacher named twice (--teachers=a,a) is one model
                continue
            seen.add(info["name"])
            path = info["path"]  # where it was found: the store, the package, or a .keras path
            scores = classification_metrics(source.splits["test"].labels,
                                            predict_labels(model, datasets["test"]), source.class_names)
            name = os.path.splitext(os.path.basename(info["name"]))[0]  # a .keras path: its stem
            rows.append({"name": name, "path": path, "params": info["params"],
                         "train_seconds": info.get("train_seconds"), "fold": fold, "scores": scores})
    return rows, first_source


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def measure_deploy(study: Study, models: dict, source) -> dict:
    """{name: {kind, bytes, latency_ms, path}} of each `.keras` in `models` ({name: path}):
    full-int8 TFLite (float32 when int8 conversion fails), 1-thread batch-1 latency. Converted
    files are kept in OUTPUT_DIR/deploy and reused while their `.keras` is unchanged."""
    import keras

    from keras_endokd.deploy.litert import latency_ms
    from keras_endokd import atomic_files
    from keras_endokd.deploy.convert import probability_model, to_tflite
    from keras_endokd.deploy.quantize import representative_images

    representative, results = None, {}
    for name, path in models.items():
        tflite_path = os.path.join(study.output_dir, "deploy", f"{name}.tflite")
        meta_path = tflite_path[: -len(".tflite")] + ".json"
        digest = _sha256(path)
        meta = _read_json(meta_path) if os.path.isfile(meta_path) and os.path.isfile(tflite_path) else {}
        if meta.get("source_sha256") != digest or meta.get("representative") != study.representative:
            if representative is None:
                representative = representative_images(source.splits["train"], study.image_size,
                                                       study.representative, study.crop_border,
                                                       seed=study.data_seed)
            model = probability_model(keras.saving.load_model(path, compile=False, safe_mode=True))
            meta = {"source": path, "source_sha256": digest, "representative": study.representative,
                    "representative_images": len(representative), "kind": "int8"}
            try:
                data = to_tflite(model, representative, "int8", "int8")
            except Exception as err:  # a teacher with an op int8 TFLite lacks: measure float32
                meta.update(kind="float32", int8_error=f"{type(err).__name__}: {str(err)[:300]}")
                data = to_tflite(model)
            atomic_files.write_bytes(tflite_path, data)
            atomic_files.write_json(meta_path, meta)
        with open(tflite_path, "rb") as f:
            data = f.read()
        ms = latency_ms(data, 1, study.latency_runs, warmup=max(5, min(50, study.latency_runs // 4)))
        results[name] = {**meta, "bytes": len(data), "latency_ms": ms, "tflite": tflite_path}
        log(f"{name}: {meta['kind']} TFLite {len(data) / 1024:.1f} KiB, {ms:.3f} ms (1 thread)")
    return results


def resolve_flags() -> Study:
    """Study settings from FLAGS, --quick defaults applied to flags not given; ValueError if bad."""
    from keras_endokd.distill.registry import parse_kd
    from keras_endokd.models.teachers import TEACHER_NAMES

    value = {name: getattr(FLAGS, name) for name in QUICK}
    if FLAGS.quick:
        value.update({k: v for k, v in QUICK.items() if not FLAGS[k].present})
    try:
        seeds = list(dict.fromkeys(int(v) for v in value["seeds"]))  # in order, each once
        ablation_seeds = list(dict.fromkeys(int(v) for v in value["ablation_seeds"]))
        heads = [int(v) for v in value["heads_grid"]]
        temperatures = [float(v) for v in value["temperature_grid"]]
        default_folds = [0, 1] if FLAGS.dataset == "hyper_kvasir" else [0]  # its official 2-fold protocol
        folds = [int(v) for v in FLAGS.folds] if FLAGS.folds else default_folds
    except ValueError as err:
        raise UsageError(f"--seeds, --ablation_seeds, --folds, --heads_grid and --temperature_grid take "
                         f"comma-separated numbers: {err}") from None
    if not seeds:
        raise UsageError("--seeds must name at least one seed.")
    ablations = list(dict.fromkeys(FLAGS.ablations)) if FLAGS.ablations is not None else [
        m.name for m in DEFAULT_ABLATIONS]
    methods = list(dict.fromkeys(FLAGS.methods)) if FLAGS.methods is not None else [m.name for m in MAIN_METHODS]
    unknown = [name for name in methods if name not in {m.name for m in MAIN_METHODS}]
    if unknown:
        raise UsageError(f"--methods: unknown method(s) {', '.join(unknown)}; expected run names among "
                         f"{', '.join(m.name for m in MAIN_METHODS)}.")
    unknown = [a for a in ablations if a not in ABLATIONS]
    if unknown:
        raise UsageError(f"--ablations: unknown method(s) {', '.join(unknown)}; expected run names among "
                         f"{', '.join(ABLATIONS)}.")
    if FLAGS.dataset != "synthetic" and not FLAGS.data_dir:
        raise UsageError(f"--dataset={FLAGS.dataset} needs --data_dir, the folder the dataset was unpacked to.")
    if FLAGS.dataset in ("synthetic", "folder") and folds != [0]:
        raise UsageError(f"--folds applies to k-fold datasets (kvasir_v2, hyper_kvasir), not {FLAGS.dataset}.")
    if not {"response", "relation"} & set(parse_kd(FLAGS.temperature_kd)):
        raise UsageError(f"--temperature_kd={FLAGS.temperature_kd} has neither response nor relation: "
                         "the temperature would change nothing.")
    unknown = [t for t in value["teachers"] if t not in TEACHER_NAMES and not t.endswith(".keras")]
    if unknown or not value["teachers"]:
        raise UsageError(f"--teachers: unknown teacher(s) {unknown}; expected registry names "
                         f"({', '.join(TEACHER_NAMES)}) or .keras files.")
    if any(h < 1 for h in heads) or any(t <= 0 for t in temperatures):
        raise UsageError("--heads_grid needs integers >= 1 and --temperature_grid values > 0.")
    for name in ("epochs", "teacher_epochs", "teacher_views", "latency_runs"):
        if value[name] < 1:
            raise UsageError(f"--{name} must be at least 1, got {value[name]}.")
    if FLAGS.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {FLAGS.jobs}.")
    if value["representative"] < 100:
        raise UsageError(f"--representative={value['representative']}: int8 calibration needs >= 100 images.")
    output_dir = value["output_dir"]
    return Study(
        dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, split_file=FLAGS.split_file, folds=folds,
        crop_border=FLAGS.crop_border, seeds=seeds, ablation_seeds=ablation_seeds, epochs=value["epochs"],
        teacher_epochs=value["teacher_epochs"], teachers=list(value["teachers"]),
        image_size=value["image_size"], batch_size=FLAGS.batch_size,
        teacher_views=value["teacher_views"], data_seed=FLAGS.data_seed, teacher_seed=FLAGS.teacher_seed,
        heads_grid=heads, temperature_grid=temperatures, temperature_kd=FLAGS.temperature_kd,
        latency_runs=value["latency_runs"], representative=value["representative"],
        output_dir=output_dir, teacher_dir=FLAGS.teacher_dir or os.path.join(output_dir, "teachers"),
        verbose=FLAGS.verbose, quick=FLAGS.quick, keep_caches=FLAGS.keep_caches,
        export_seeds=[int(v) for v in value["export_seeds"]], deterministic=FLAGS.deterministic,
        ablations=ablations, jobs_at_once=FLAGS.jobs, methods=methods)


def study_main(study: Study, command: str) -> dict:
    """Runs the whole study and writes every output; returns the final JSON summary."""
    from experiments import kd_study_report as report

    start = time.time()
    jobs = study.jobs()
    log(f"{len(jobs)} runs into {os.path.abspath(study.output_dir)}: {len(study.main_methods())} methods x "
        f"{len(study.seeds)} seeds, ablations x {len(study.ablation_seeds)} seeds, folds {study.folds}, "
        f"{study.epochs} epochs")
    records = execute(study)
    teachers, source = evaluate_teachers(study)
    headline_dir = study.run_dir(HEADLINE, study.seeds[0], study.folds[0])
    models = {"student": os.path.join(headline_dir, "student.keras")}
    for t in teachers:
        models.setdefault(f"teacher_{t['name']}", t["path"])
    deploy = measure_deploy(study, models, source)
    results = report.build_results(study, records, teachers, deploy, command, time.time() - start)
    report.write_outputs(results, study.output_dir)
    summary = report.summary(results)
    print(report.main_table(results), flush=True)
    log(f"done in {(time.time() - start) / 60:.1f} min ({summary['fresh_runs']} runs trained, "
        f"{summary['reused_runs']} reused): {os.path.abspath(os.path.join(study.output_dir, 'results.md'))}")
    print(json.dumps(summary), flush=True)
    return summary


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    _, code = parse_flags(FLAGS, argv, __doc__)
    if code is not None:
        return code
    try:
        study = resolve_flags()
    except ValueError as err:
        return fail(err)
    study_main(study, " ".join(["python -m experiments.kd_study", *argv[1:]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""experiments.kd_study's outputs: per-method summaries, the Markdown tables, the plots.

Aggregation: a seed's value is the mean over its folds (Hyper-Kvasir's 2-fold protocol; one fold
elsewhere); a method's figure is the mean and the sample standard deviation (n - 1) of those
per-seed values. Confusion matrices are summed over every seed and fold a method ran with.
"""

from __future__ import annotations

import dataclasses
import os
import statistics

import numpy as np

from keras_endokd import atomic_files

METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "mcc")
_COLUMNS = ("Acc. (%)", "Macro prec. (%)", "Macro rec. (%)", "Macro F1 (%)", "MCC")


def summarize(records: list, method, seeds: list) -> dict:
    """One method's figures over `seeds` from the run records (kd_study.execute)."""
    runs = [r for r in records if r["method"] == method.name and r["seed"] in seeds]
    per_seed = {}
    for seed in seeds:
        folds = [r["student"] for r in runs if r["seed"] == seed]
        per_seed[seed] = {k: float(np.mean([f[k] for f in folds])) for k in METRICS}
    values = {k: [per_seed[s][k] for s in seeds] for k in METRICS}
    return {"name": method.name, "label": method.label, **dataclasses.asdict(method), "seeds": list(seeds),
            "mean": {k: statistics.fmean(v) for k, v in values.items()},
            "std": {k: statistics.stdev(v) if len(v) > 1 else None for k, v in values.items()},
            "per_seed": per_seed, "params": runs[0]["student"]["params"]}


def _per_seed(records: list, name: str, seeds: list, value) -> dict:
    """{seed: value(record) averaged over the seed's folds} for the runs of `name`."""
    out = {}
    for seed in seeds:
        values = [value(r) for r in records if r["method"] == name and r["seed"] == seed]
        values = [v for v in values if v is not None]
        if values:
            out[seed] = float(np.mean(values))
    return out


def paired(a: dict, b: dict) -> dict:
    """Paired gain of per-seed values `a` over `b` ({seed: fraction}), in accuracy points.

    {"gain_mean", "gain_ci95": Student-t 95% interval of the mean over seeds, "wins": seeds where
    a > b, "n", "per_seed"}; the interval is None with fewer than two seeds.
    """
    from scipy import stats

    seeds = [s for s in a if s in b]
    gains = [100.0 * (a[s] - b[s]) for s in seeds]
    n = len(gains)
    mean = statistics.fmean(gains) if gains else None
    ci = None
    if n > 1:
        half = stats.t.ppf(0.975, n - 1) * statistics.stdev(gains) / n**0.5
        ci = [mean - half, mean + half]
    return {"gain_mean": mean, "gain_ci95": ci, "wins": sum(g > 0 for g in gains), "n": n,
            "per_seed": dict(zip(seeds, gains))}


def _accuracy(record):
    return record["student"]["accuracy"]


def _int8_accuracy(record):
    return (record.get("deploy") or {}).get("int8_accuracy")


def baseline_by_validation(records: list, seeds: list) -> str:
    """The student-alone arm distillation is paired against: of study_methods.BASELINES (the
    views, fresh augmentation), the one with the higher mean validation accuracy over `seeds`."""
    from experiments.study_methods import BASELINES

    val = {m.name: statistics.fmean(_per_seed(records, m.name, seeds, lambda r: r["student"]["val_accuracy"]).values())
           for m in BASELINES}
    return max(val, key=val.get)


def add_pairings(rows: list, records: list, seeds: list, headline: str) -> str:
    """Adds `paired_vs_none` (and the int8 pairing) to every main row; returns the baseline's name.

    The baseline is the better student-alone arm by mean validation accuracy (the fixed views of
    the comparison, or fresh augmentation), so distillation is never compared with a handicapped
    student. Each row also gets `paired_vs_baselines` (both arms); the attention-fusion rows get
    `paired_vs_mean_fusion`.
    """
    from experiments.study_methods import BASELINES, Method

    baseline = baseline_by_validation(records, seeds)
    for row in rows:
        acc = _per_seed(records, row["name"], seeds, _accuracy)
        row["paired_vs_baselines"] = {m.name: paired(acc, _per_seed(records, m.name, seeds, _accuracy))
                                      for m in BASELINES}
        row["paired_vs_none"] = row["paired_vs_baselines"][baseline]
        int8 = _per_seed(records, row["name"], seeds, _int8_accuracy)
        row["int8"] = {"per_seed": int8, "mean": statistics.fmean(int8.values()) if int8 else None,
                       "paired_vs_none": paired(int8, _per_seed(records, baseline, seeds, _int8_accuracy))}
        if row["kd"] == "relation" and row["fusion"] == "attention":
            mean_fusion = Method("relation", "mean", temperature=row["temperature"], inputs=row["inputs"]).name
            row["paired_vs_mean_fusion"] = paired(acc, _per_seed(records, mean_fusion, seeds, _accuracy))
    return baseline


def add_ablation_pairing(row: dict, records: list, seeds: list, baseline: str) -> dict:
    """A recipe ablation's paired gains over its ablation seeds: `paired_vs_recipe` against the
    same method without the change (the main table's run of that seed: no variant, on the views),
    and `paired_vs_none` against the baseline (on the seeds where both ran)."""
    from experiments.study_methods import Method

    fields = {k: row[k] for k in ("kd", "fusion", "heads", "temperature")}
    acc = _per_seed(records, row["name"], seeds, _accuracy)
    unablated = Method(**fields, inputs="views").name
    row["paired_vs_recipe"] = paired(acc, _per_seed(records, unablated, seeds, _accuracy))
    row["paired_vs_none"] = paired(acc, _per_seed(records, baseline, seeds, _accuracy))
    return row


def teacher_rows(teachers: list) -> list:
    """Teachers' figures, averaged over folds (one training seed: no std)."""
    rows = {}
    for t in teachers:
        rows.setdefault(t["name"], []).append(t)
    out = []
    for name, folds in rows.items():
        out.append({"name": name, "label": f"Teacher {name}", "params": folds[0]["params"],
                    "paths": [f["path"] for f in folds],
                    "mean": {k: float(np.mean([f["scores"][k] for f in folds])) for k in METRICS},
                    "std": {k: None for k in METRICS},
                    "confusion_matrix": np.sum([f["scores"]["confusion_matrix"] for f in folds], 0).tolist()})
    return out


def protocol(records: list) -> dict:
    """The comparison's protocol, and whether every arm of a seed saw one input stream.

    `identical_streams_per_seed`: {seed: True} when every `views` run of that seed (and fold)
    recorded the same input-stream fingerprint (keras_endokd.student_stage.protocol);
    `identical_fresh_streams_per_seed` the same for the runs on fresh augmentation."""
    streams = {"views": {}, "fresh": {}}
    for r in records:
        p = r.get("protocol") or {}
        if p.get("train_inputs") in streams:
            seed = streams[p["train_inputs"]].setdefault(f"{r['seed']}/{r['fold']}", set())
            seed.add(p.get("input_stream_sha256"))
    same = {inputs: {k: len(v) == 1 and None not in v for k, v in by_seed.items()}
            for inputs, by_seed in streams.items()}
    first = next((r["protocol"] for r in records if r.get("protocol")), {})
    return {"rule": "every arm of a seed trains on the same input stream (the same images, views and "
                    "order; on fresh augmentation the same draws), with the same epochs, batch size, "
                    "optimizer and schedule; only the loss differs. The student alone is also trained on "
                    "fresh augmentation, and distillation is paired against the better of the two by "
                    "validation accuracy.",
            "train_inputs": first.get("train_inputs"), "views_per_image": first.get("views_per_image"),
            "epochs": first.get("epochs"), "batch_size": first.get("batch_size"),
            "optimizer": first.get("optimizer"), "schedule": first.get("schedule"),
            "learning_rate": first.get("learning_rate"),
            "identical_streams_per_seed": same["views"], "identical_fresh_streams_per_seed": same["fresh"]}


def build_results(study, records, teachers, deploy, command, seconds) -> dict:
    """Everything results.json holds, and what the tables and plots are drawn from."""
    from experiments.study_methods import HEADLINE

    ablation = study.ablation_seeds
    chosen = study.ablation_methods() if ablation else []
    confusion = {}
    for r in records:
        cm = np.asarray(r["student"]["confusion_matrix"])
        confusion[r["method"]] = confusion.get(r["method"], 0) + cm
    main = [summarize(records, m, study.seeds) for m in study.main_methods()]
    baseline = add_pairings(main, records, study.seeds, HEADLINE.name)
    return {
        "settings": {**dataclasses.asdict(study), "command": command, "cpu_count": os.cpu_count(),
                     "protocol": protocol(records)},
        "class_names": records[0]["student"]["class_names"],
        "headline": HEADLINE.name,
        "baseline": baseline,
        "main": main,
        "other": [summarize(records, m, ablation) for m in chosen if not m.variant and m.inputs == "views"],
        # a change of the headline recipe or of the input stream, paired against the method without it
        "recipe": [add_ablation_pairing(summarize(records, m, ablation), records, ablation, baseline)
                   for m in chosen if m.variant or m.inputs != "views"],
        "heads": [{"value": m.heads, **summarize(records, m, ablation)}
                  for m in (study.heads_methods() if ablation else [])],
        "temperature": [{"value": m.temperature, **summarize(records, m, ablation)}
                        for m in (study.temperature_methods() if ablation else [])],
        "teachers": teacher_rows(teachers),
        "deploy": deploy,
        "confusion_matrices": {name: cm.tolist() for name, cm in confusion.items()},
        "runs": records,
        "seconds": seconds,
    }


def _cell(row, key):
    scale, digits = (1, 3) if key == "mcc" else (100, 1)
    mean, std = row["mean"][key], row["std"][key]
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def _deploy_cells(entry) -> str:
    kind = "" if entry["kind"] == "int8" else f" ({entry['kind']})"
    return f"{entry['bytes'] / 1024:.1f}{kind} | {entry['latency_ms']:.3f}{kind}"


def _gain(p) -> str:
    if not p or p["gain_mean"] is None:
        return ""
    ci = "" if p["gain_ci95"] is None else f" [{p['gain_ci95'][0]:+.1f}, {p['gain_ci95'][1]:+.1f}]"
    return f"{p['gain_mean']:+.1f}{ci}, {p['wins']}/{p['n']}"


def main_table(results) -> str:
    head = ("| Method | Params | " + " | ".join(_COLUMNS) + " | Gain vs alone (pts, 95% CI, wins) | "
            "int8 acc. (%) | int8 gain (pts) | int8 size (KiB) | int8 latency (ms) |")
    lines = [head, "|---|---:|" + "---:|" * (len(_COLUMNS) + 6)]
    for t in results["teachers"]:
        cells = " | ".join(_cell(t, k) for k in METRICS)
        deploy = _deploy_cells(results["deploy"]["teacher_" + t["name"]])
        lines.append(f"| {t['label']} | {t['params']:,} | {cells} | | | | {deploy} |")
    student = _deploy_cells(results["deploy"]["student"])
    for row in results["main"]:
        cells = " | ".join(_cell(row, k) for k in METRICS)
        label = f"**{row['label']}**" if row["name"] == results["headline"] else row["label"]
        if row["name"] == results["baseline"]:
            label += " (baseline)"
        int8 = row.get("int8") or {}
        int8_cell = "" if int8.get("mean") is None else f"{100 * int8['mean']:.1f}"
        gain = "" if row["name"] == results["baseline"] else _gain(row.get("paired_vs_none"))
        int8_gain = "" if row["name"] == results["baseline"] else _gain(int8.get("paired_vs_none"))
        lines.append(f"| {label} | {row['params']:,} | {cells} | {gain} | {int8_cell} | {int8_gain} | {student} |")
    return "\n".join(lines)


def per_seed_table(results) -> str:
    """Test accuracy (%) of every main method on every seed."""
    seeds = results["settings"]["seeds"]
    lines = ["| Method | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---:|" * len(seeds)]
    for row in results["main"]:
        cells = " | ".join(f"{100 * row['per_seed'][s]['accuracy']:.1f}" if s in row["per_seed"] else ""
                           for s in seeds)
        lines.append(f"| {row['label']} | {cells} |")
    return "\n".join(lines)


def ablation_table(rows, what: str, default: float) -> str:
    lines = [f"| {what} | " + " | ".join(_COLUMNS) + " |", "|---:|" + "---:|" * len(_COLUMNS)]
    for row in rows:
        value = f"**{row['value']:g}**" if row["value"] == default else f"{row['value']:g}"
        lines.append(f"| {value} | " + " | ".join(_cell(row, k) for k in METRICS) + " |")
    return "\n".join(lines)


def markdown(results) -> str:
    from experiments.study_methods import HEADS, TEMPERATURE

    s = results["settings"]
    student = results["deploy"]["student"]
    folds = "" if s["folds"] == [0] else (
        f", folds {s['folds']} (each run trains on the other folds and tests on its own; a seed's "
        "value is the mean over folds)")
    teachers = "; ".join(f"{t['name']} ({results['deploy']['teacher_' + t['name']]['kind']})"
                         for t in results["teachers"])
    ablations = []
    if results.get("recipe") or results.get("other"):
        headline = next(r for r in results["main"] if r["name"] == results["headline"])
        rows = [headline] + results.get("other", []) + results["recipe"]
        lines = ["| Method | Acc. (%) | Val. acc. (%) | Gain vs the recipe without the change (pts, 95% CI, "
                 "wins) | Gain vs alone |", "|---|---:|---:|---:|---:|"]
        for row in rows:
            val = _per_seed(results["runs"], row["name"], s["ablation_seeds"],
                            lambda r: r["student"]["val_accuracy"])
            acc = _per_seed(results["runs"], row["name"], s["ablation_seeds"], _accuracy)
            lines.append(f"| {row['label']} | {100 * statistics.fmean(acc.values()):.1f} | "
                         f"{100 * statistics.fmean(val.values()):.1f} | {_gain(row.get('paired_vs_recipe'))} | "
                         f"{_gain(row.get('paired_vs_none'))} |")
        ablations += ["## Other methods and ablations of the headline recipe (seeds "
                      + ", ".join(map(str, s["ablation_seeds"])) + ")", "", *lines, ""]
    if len(results["heads"]) > 1:
        ablations += ["## Ablation: attention heads (relation, MHA fusion)", "",
                      ablation_table(results["heads"], "Heads", HEADS), ""]
    if len(results["temperature"]) > 1:
        ablations += [f"## Ablation: temperature (`--kd={s['temperature_kd']}`, MHA fusion, "
                      f"{results['temperature'][0]['heads']} heads)", "",
                      "The temperature softens the logit terms (response, and relation's weighted KD).", "",
                      ablation_table(results["temperature"], "T", TEMPERATURE), ""]
    return "\n".join([
        "# Distillation methods compared (Gammulle et al. 2023 protocol)",
        "",
        f"- Command: `{s['command']}`",
        f"- Dataset: {s['dataset']}{' at ' + s['data_dir'] if s['data_dir'] else ''}, "
        f"{s['image_size']}x{s['image_size']} images, data seed {s['data_seed']}{folds}.",
        f"- Teachers: {', '.join(t['name'] for t in results['teachers'])}, trained once"
        f"{'' if s['folds'] == [0] else ' per fold (their rows: mean over folds)'} "
        f"(teacher epochs: {s['teacher_epochs']}, seed {s['teacher_seed']}) and shared by every run; "
        f"their outputs (every tap) are cached on disk (augmented views per image: "
        f"{s['teacher_views']}), one cache per seed.",
        f"- Students: epochs: {s['epochs']}; main table over seeds {s['seeds']}, ablations over "
        f"seeds {s['ablation_seeds']}; {len(results['runs'])} runs "
        f"({sum(r['seconds'] or 0 for r in results['runs']) / 60:.1f} min of runs, teacher training "
        f"included, {s.get('jobs_at_once', 1)} at once; this invocation {results['seconds'] / 60:.1f} min, "
        f"{sum(r['reused'] for r in results['runs'])} runs reused)"
        f"{' (--quick: a smoke test, not a result)' if s['quick'] else ''}.",
        "",
        "## Main comparison",
        "",
        main_table(results),
        "",
        f"Gains are paired by seed against the student alone ({results['baseline']}: the better of "
        "its two input streams by validation accuracy), in accuracy points: mean, Student-t 95% "
        "interval over seeds, and the seeds won. int8: the pruned export of the seeds in "
        f"{s['export_seeds']}, checked in LiteRT on the test split.",
        "",
        "Test accuracy (%) per seed:",
        "",
        per_seed_table(results),
        "",
        "Mean ± sample standard deviation over seeds (the seed sets the student's initialisation, "
        "shuffling, augmentation and cached teacher views; split and teachers are fixed). Teachers are "
        "trained once: one value, no std. **Bold**: the headline method.",
        f"Every student row shares one int8 measurement: the seed-{s['seeds'][0]} "
        f"{results['headline']} student, converted to full-int8 TFLite (not pruned: the shipped "
        f"export prunes to 50% first and strips names, 83.6 KB at 128x128) with "
        f"{student['representative_images']} representative training images; latency is the median of "
        f"{s['latency_runs']} LiteRT `invoke()` calls at batch 1 on 1 thread "
        f"({s['cpu_count']}-core machine, experiments.bench_infer.latency_ms). Teachers: {teachers}.",
        "",
        *ablations,
        *([f"Ablations: mean ± std over seeds {s['ablation_seeds']} (no std with one seed); **bold**: "
           "the main table's setting."] if s["ablation_seeds"] else []),
        "Confusion matrices (confusion_matrices/): summed over every seed and fold a method ran with.",
        "",
    ])


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tradeoff(results, x_key: str, path: str) -> str:
    """Accuracy against params or int8 latency (log x); student points dodged sideways."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    student = results["deploy"]["student"]
    for t in results["teachers"]:
        entry = results["deploy"]["teacher_" + t["name"]]
        x = t["params"] if x_key == "params" else entry["latency_ms"]
        kind = "" if entry["kind"] == "int8" or x_key == "params" else f", {entry['kind']}"
        ax.scatter([x], [100 * t["mean"]["accuracy"]], marker="s", s=50, color="0.35", zorder=3)
        ax.annotate(f"{t['name']}{kind}", (x, 100 * t["mean"]["accuracy"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    rows = results["main"]
    x0 = rows[0]["params"] if x_key == "params" else student["latency_ms"]
    markers = "ov^<>DPX*"
    for i, (row, dodge) in enumerate(zip(rows, np.linspace(-0.05, 0.05, len(rows)))):
        std = row["std"]["accuracy"]
        ax.errorbar([x0 * 10**dodge], [100 * row["mean"]["accuracy"]],
                    yerr=None if std is None else [100 * std], fmt=markers[i % len(markers)], capsize=3,
                    label=row["label"])
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters" if x_key == "params" else "int8 TFLite latency, batch 1, 1 thread (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{results['settings']['dataset']}: students (mean ± std over seeds) and teachers", fontsize=9)
    fig.text(0.01, 0.01, f"Every student has {rows[0]['params']:,} parameters and one int8 latency; "
             "its points are spread sideways only to be legible.", fontsize=7, color="0.3")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    with atomic_files.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def write_outputs(results, folder: str) -> list:
    from keras_endokd.classification_metrics import plot_confusion_matrix

    paths = [atomic_files.write_json(os.path.join(folder, "results.json"), results),
             atomic_files.write_text(os.path.join(folder, "results.md"), markdown(results)),
             plot_tradeoff(results, "params", os.path.join(folder, "accuracy_vs_params.png")),
             plot_tradeoff(results, "latency", os.path.join(folder, "accuracy_vs_latency.png"))]
    labels = {r["name"]: r["label"] for r in results["main"] + results.get("other", []) + results.get("recipe", [])
              + results["heads"] + results["temperature"]}
    matrices = dict(results["confusion_matrices"])
    matrices.update({f"teacher_{t['name']}": t["confusion_matrix"] for t in results["teachers"]})
    for name, cm in matrices.items():
        total = np.asarray(cm)
        title = f"{labels.get(name, name)}: accuracy {np.trace(total) / max(total.sum(), 1):.3f} (summed)"
        paths.append(plot_confusion_matrix(cm, results["class_names"],
                                           os.path.join(folder, "confusion_matrices", f"{name}.png"), title))
    return paths


def summary(results) -> dict:
    """The final JSON line."""
    runs = results["runs"]
    return {"dataset": results["settings"]["dataset"], "epochs": results["settings"]["epochs"],
            "seeds": results["settings"]["seeds"], "runs": len(runs),
            "fresh_runs": sum(not r["reused"] for r in runs), "reused_runs": sum(r["reused"] for r in runs),
            "minutes": round(results["seconds"] / 60, 2),
            "accuracy": {row["name"]: round(row["mean"]["accuracy"], 4) for row in results["main"]},
            "baseline": results["baseline"],
            "paired_vs_none": {row["name"]: row["paired_vs_none"] for row in results["main"]
                               if row["name"] != results["baseline"]},
            "student_int8_ms": round(results["deploy"]["student"]["latency_ms"], 4),
            "student_int8_bytes": results["deploy"]["student"]["bytes"]}

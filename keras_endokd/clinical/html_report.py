"""report.html: everything a run wrote, on one self-contained page.

`write_report(run_dir)` reads the run folder and writes `report.html` beside it (atomically).
The page loads nothing: images are inline base64 PNGs, the style sheet is inline, there is no
script and no web font, so it opens offline, from an e-mail attachment or a hospital network.

What it reads, each optional but metrics.json (a missing piece gets a line saying so):

    metrics.json               headline and per-class figures, calibration, teachers (required)
    config.json                the run's settings
    history.csv                training curves (plotted here)
    confusion_matrix.png       the confusion matrix (an HTML table is drawn from metrics too)
    reliability_diagram*.png   reliability diagrams (the student's, then each exported model's)
    roc_pr_curves.png          per-class ROC and PR curves
    explanations.png           test images with their Grad-CAM overlays
    export_report.json         deployment: sizes, per-model test figures, arena, latency,
                               model card (model_card.json when the report has none)

Tables stay legible at Hyper-Kvasir's 23 classes: they scroll inside their box with a sticky
header, and the confusion matrix numbers its columns (the row names carry the numbers).
"""

from __future__ import annotations

import datetime
import glob
import json
import os
from typing import Optional

from keras_endokd.clinical.html_parts import (CSS, dict_table, escape, kilobytes, missing, number,
                                              png_image, shaded_cell, table)

REPORT = "report.html"
CONFUSION_PNG = "confusion_matrix.png"
RELIABILITY_PNG = "reliability_diagram.png"  # the student's; reliability_diagram_<model>.png
CURVES_PNG = "roc_pr_curves.png"
EXPLANATIONS_PNG = "explanations.png"
HEADLINE = (("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("mcc", "MCC"),
            ("macro_precision", "macro precision"), ("macro_recall", "macro recall"),
            ("macro_roc_auc", "macro ROC-AUC"), ("macro_pr_auc", "macro PR-AUC"),
            ("ece", "ECE (15 bins)"), ("brier", "Brier score"), ("nll", "NLL"))
PER_CLASS = (("support", "test images"), ("precision", "precision"), ("recall", "recall"),
             ("f1", "F1"), ("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"))
MODEL_COLUMNS = (("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("mcc", "MCC"),
                 ("agreement", "agreement"), ("ece", "ECE"), ("brier", "Brier"),
                 ("macro_roc_auc", "macro ROC-AUC"))


class ReportError(ValueError):
    """The run folder cannot give a report (no folder, or no metrics.json in it)."""


def write_report(run_dir: str, path: Optional[str] = None) -> str:
    """Builds the page from `run_dir` and writes it to `path` (default run_dir/report.html)."""
    from keras_endokd import atomic_files

    page = build_report(run_dir)
    return atomic_files.write_text(path or os.path.join(run_dir, REPORT), page)


def build_report(run_dir: str) -> str:
    """The report's HTML text. Raises ReportError when `run_dir` or its metrics.json is missing."""
    if not os.path.isdir(run_dir):
        raise ReportError(f"--run_dir={run_dir}: no such folder. Give the folder a training run "
                          "wrote (the one with metrics.json).")
    metrics, err = _read_json(run_dir, "metrics.json")
    if metrics is None:
        raise ReportError(f"--run_dir={run_dir} holds no readable metrics.json ({err}): it is not "
                          "the folder of a finished run. Train first (python -m keras_endokd.train "
                          "--output_dir=DIR) or point at the folder that has metrics.json.")
    run = _Run(run_dir, metrics)
    sections = [("Headline", _headline), ("Per class", _per_class),
                ("Confusion matrix", _confusion), ("Calibration", _calibration),
                ("ROC and PR curves", _curves), ("Training", _training),
                ("Teachers and student", _teachers), ("Explanations", _explanations),
                ("Unfamiliar inputs", _ood), ("Deployment", _deployment),
                ("Model card", _model_card)]
    body = []
    for title, draw in sections:
        try:
            content = draw(run)
        except Exception as err:  # a malformed file must not cost the rest of the page
            content = missing(f"this section could not be drawn: {type(err).__name__}: {err}")
        anchor = title.lower().replace(" ", "-")
        body.append(f'<section id="{anchor}"><h2>{escape(title)}</h2>\n{content}\n</section>')
    nav = " · ".join(f'<a href="#{t.lower().replace(" ", "-")}">{escape(t)}</a>' for t, _ in sections)
    name = os.path.basename(os.path.abspath(run_dir))
    banner = run.description()
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>keras-endokd report: {escape(name)}</title><style>{CSS}</style></head><body>\n"
        f"<header><h1>keras-endokd run report: {escape(name)}</h1>"
        f"<p class=\"sub\">{escape(run.summary())}</p>"
        + (f"<p class=\"banner\">{escape(banner)}</p>" if banner else "")
        + f"<nav>{nav}</nav></header>\n<main>\n" + "\n".join(body) + "\n</main>\n"
        f"<footer>Rebuild with <code>python -m keras_endokd.report --run_dir={escape(run_dir)}</code>. "
        f"Written {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; the page loads nothing "
        "from the network.</footer>\n</body></html>\n"
    )


class _Run:
    """The run folder's files, each read once; missing ones are None with the reason kept."""

    def __init__(self, run_dir: str, metrics: dict):
        self.dir = run_dir
        self.metrics = metrics
        self.student = metrics.get("student") if isinstance(metrics.get("student"), dict) else {}
        self.config, _ = _read_json(run_dir, "config.json")
        self.export, self.export_error = _read_json(run_dir, "export_report.json")

    def class_names(self) -> list:
        dataset = self.metrics.get("dataset")
        for names in (self.student.get("class_names"),
                      dataset.get("class_names") if isinstance(dataset, dict) else None,
                      self.student.get("per_class")):
            if isinstance(names, (list, dict)) and names:
                return [str(n) for n in names]
        return []

    def card(self) -> dict:
        if self.export and isinstance(self.export.get("model_card"), dict):
            return self.export["model_card"]
        card, _ = _read_json(self.dir, "model_card.json")
        return card or {}

    def description(self) -> str:
        description = self.card().get("description", "")
        return description if isinstance(description, str) else ""

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def summary(self) -> str:
        dataset = self.metrics.get("dataset") if isinstance(self.metrics.get("dataset"), dict) else {}
        cfg = self.config or self.metrics.get("config")
        cfg = cfg if isinstance(cfg, dict) else {}
        parts = [f"dataset {dataset.get('dataset') or dataset.get('name') or cfg.get('dataset', '?')}",
                 f"{len(self.class_names())} classes",
                 f"{self.student.get('num_images', '?')} test images"]
        if cfg.get("kd"):
            parts.append(f"distillation --kd={cfg['kd']}")
        if cfg.get("epochs"):
            parts.append(f"{cfg['epochs']} epochs")
        return ", ".join(parts)


def _read_json(run_dir: str, name: str):
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        return None, f"no {name}"
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as err:
        return None, f"{name} could not be read: {err}"
    if not isinstance(value, dict):
        return None, f"{name} does not hold a JSON object"
    return value, None










def _image(run: _Run, name: str, alt: str, css: str = "") -> Optional[str]:
    path = run.path(name)
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return png_image(f.read(), alt, css)








def _headline(run: _Run) -> str:
    s = run.student
    cards = [f'<div class="card"><div class="v">{number(s.get(k))}</div><div class="k">{escape(label)}</div></div>'
             for k, label in HEADLINE if k in s]
    if s.get("params"):
        cards.append(f'<div class="card"><div class="v">{number(s["params"])}</div>'
                     '<div class="k">student parameters</div></div>')
    absent = [label for k, label in HEADLINE if k not in s]
    note = missing("in metrics.json: " + ", ".join(absent)) if absent else ""
    return f'<p>Keras student on the test split.</p><div class="cards">{"".join(cards)}</div>{note}'


def _per_class(run: _Run) -> str:
    per_class = run.student.get("per_class")
    if not per_class:
        return missing("metrics.json has no student.per_class")
    rows = []
    for i, (name, v) in enumerate(per_class.items()):
        cells = [f"<td>{i}</td>", f'<td class="name">{escape(name)}</td>',
                 f"<td>{number(v.get('support'))}</td>"]
        cells += [shaded_cell(v.get(k)) for k, _ in PER_CLASS[1:]]
        note = v.get("auc_note", "")
        cells.append(f'<td class="note">{escape(note)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("#",)) + '<th class="name">class</th>' + "".join(
        f"<th>{h}</th>" for h in (*(l for _, l in PER_CLASS), "note"))
    return (f'<div class="scroll tall"><table><thead><tr>{head}</tr></thead><tbody>'
            f'{"".join(rows)}</tbody></table></div>')


def _confusion(run: _Run) -> str:
    cm = run.student.get("confusion_matrix")
    names = run.class_names()
    parts = []
    if cm and len(cm) == len(names):
        head = "<th>true \\ predicted</th>" + "".join(f'<th title="{escape(n)}">{i}</th>'
                                                     for i, n in enumerate(names))
        rows = []
        for i, row in enumerate(cm):
            total = max(sum(row), 1)
            cells = []
            for j, count in enumerate(row):
                rate = count / total
                colour = f"hsl(210,70%,{100 - 55 * rate:.0f}%)" if i == j else f"hsl(0,75%,{100 - 45 * rate:.0f}%)"
                style = f' style="background:{colour}"' if count else ""
                cells.append(f'<td{style} title="{escape(names[i])} → {escape(names[j])}: {count}">'
                             f'{count if count else ""}</td>')
            rows.append(f'<tr><th class="name">{i} · {escape(names[i])}</th>{"".join(cells)}</tr>')
        parts.append("<p>Rows: true class; columns: predicted class, numbered as the rows. The "
                     "diagonal (blue) is right; red cells are confusions, darker the larger "
                     "their share of the row.</p>"
                     f'<div class="scroll tall"><table class="cm"><thead><tr>{head}</tr></thead>'
                     f'<tbody>{"".join(rows)}</tbody></table></div>')
    else:
        parts.append(missing("metrics.json has no student.confusion_matrix"))
    img = _image(run, CONFUSION_PNG, "confusion matrix", "wide")
    parts.append(f"<details><summary>{CONFUSION_PNG}</summary><div class=\"scroll\">{img}</div></details>"
                 if img else missing(f"no {CONFUSION_PNG}"))
    return "\n".join(parts)


def _calibration(run: _Run) -> str:
    parts = []
    cal = run.metrics.get("calibration")
    if isinstance(cal, dict):
        t = cal.get("temperature")
        parts.append(f"<p>Temperature scaling: T = {number(t, 3)}, fitted on the "
                     f"{escape(cal.get('fitted_on', 'validation'))} split by minimising its negative "
                     "log-likelihood (Guo et al. 2017); the exported models divide their logits "
                     "by T in their last layer.</p>")
        rows = [[escape(when), *(number((cal.get(when) or {}).get(k)) for k in ("ece", "brier", "nll"))]
                for when in ("before", "after") if isinstance(cal.get(when), dict)]
        if rows:
            parts.append(table(["test split", "ECE", "Brier", "NLL"], rows))
    else:
        parts.append(missing("metrics.json has no calibration entry (temperature, ECE before "
                              "and after)"))
    images = sorted(glob.glob(os.path.join(run.dir, "reliability_diagram*.png")),
                    key=lambda p: (os.path.basename(p) != RELIABILITY_PNG, p))
    if images:
        parts.append('<div class="row">' + "".join(
            _image(run, os.path.basename(p), os.path.basename(p), "half") for p in images) + "</div>")
    else:
        parts.append(missing(f"no {RELIABILITY_PNG}"))
    return "\n".join(parts)


def _curves(run: _Run) -> str:
    img = _image(run, CURVES_PNG, "ROC and PR curves per class", "wide")
    return img or missing(f"no {CURVES_PNG}")


def _training(run: _Run) -> str:
    from keras_endokd.clinical.history_plot import plot_history

    path = run.path("history.csv")
    if not os.path.isfile(path):
        return missing("no history.csv")
    try:
        return png_image(plot_history(path), "training curves", "wide")
    except (OSError, ValueError, StopIteration) as err:
        return missing(f"history.csv could not be plotted: {err}")


def _teachers(run: _Run) -> str:
    teachers = run.metrics.get("teachers") or []
    s = run.student
    rows = [["<b>student</b>", number(s.get("params")), number(s.get("accuracy")),
             number(s.get("macro_f1")), ""]]
    for t in teachers:
        if not isinstance(t, dict):
            continue
        ratio = (f"{t['params'] / s['params']:.1f}x the student" if isinstance(t.get("params"), (int, float))
                 and s.get("params") else "")
        rows.append([escape(t.get("name", "?")), number(t.get("params")),
                     number(t.get("test_accuracy", t.get("accuracy"))), number(t.get("macro_f1")), ratio])
    drawn = table(["model", "parameters", "test accuracy", "macro F1", "size"], rows)
    return drawn if teachers else drawn + missing("metrics.json lists no teachers (--kd=none?)")


def _explanations(run: _Run) -> str:
    img = _image(run, EXPLANATIONS_PNG, "test images with Grad-CAM overlays", "wide")
    if not img:
        return missing(f"no {EXPLANATIONS_PNG} (test images with their Grad-CAM overlays)")
    return ("<p>Grad-CAM of the predicted class (Selvaraju et al. 2017): warm colours are where "
            "the student's last feature map drove its decision. Misclassified images first, the "
            "most frequent confusions first, then correctly classified ones.</p>" + img)


def _ood(run: _Run) -> str:
    entry = run.card().get("ood") or run.metrics.get("ood")
    if not isinstance(entry, dict):
        return missing("no out-of-distribution threshold in the model card or metrics.json")
    return dict_table(entry)


def _deployment(run: _Run) -> str:
    r = run.export
    if r is None:
        return missing(f"{run.export_error}: the run was not exported "
                        f"(python -m keras_endokd.export --run_dir={run.dir})")
    parts = []
    if r.get("status") != "ok":
        parts.append(f'<p class="bad">Export status: {escape(r.get("status", "?"))}: '
                     f'{escape(r.get("error", ""))}</p>')
    sizes = (r.get("conversion") or {}).get("sizes") or {}
    if sizes:
        parts.append(table(["file", "size", "gzip", "sha256"],
                            [[f"<code>{escape(f)}</code>", kilobytes(v.get("bytes")), kilobytes(v.get("gzip_bytes")),
                              f'<code class="hash">{escape(str(v.get("sha256", ""))[:16])}…</code>']
                             for f, v in sizes.items()]))
    checks = r.get("checks") or {}
    if checks:
        parts.append("<h3>Test split, per model</h3>" + table(
            ["model", *(l for _, l in MODEL_COLUMNS)],
            [[escape(k), *(number(v.get(c)) for c, _ in MODEL_COLUMNS)] for k, v in checks.items()
             if isinstance(v, dict)]))
    micro = r.get("micro") or {}
    if micro:
        parts.append("<h3>Microcontroller (TensorFlow Lite Micro)</h3>" + table(
            ["int8 model", "arena used", "arena recommended", "arena target", "model target", "ops"],
            [[kilobytes(micro.get("model_bytes")), kilobytes(micro.get("arena_used_bytes")),
              kilobytes(micro.get("arena_size_recommended")), _met(micro.get("arena_target_met")),
              _met(micro.get("model_target_met")),
              f'<span class="wrap">{escape(", ".join(micro.get("ops") or []))}</span>']]))
        if micro.get("arena_note"):
            parts.append(f'<p class="note">{escape(micro["arena_note"])}</p>')
    latency = r.get("latency") or run.metrics.get("latency")
    parts.append("<h3>Latency</h3>" + (dict_table(latency) if isinstance(latency, dict) else
                                       missing("no latency figures in export_report.json")))
    return "\n".join(parts)


def _met(flag) -> str:
    return {True: '<span class="good">met</span>', False: '<span class="bad">not met</span>'}.get(
        flag, "unknown")


def _model_card(run: _Run) -> str:
    card = run.card()
    if not card:
        return missing("no model card (export_report.json or model_card.json)")
    return dict_table(card)


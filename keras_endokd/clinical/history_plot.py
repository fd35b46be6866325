"""A run's training curves (history.csv, Keras' CSVLogger) as PNG bytes, for the HTML report.

Two panels over the epochs: the losses (total training loss and validation loss bold, each
distillation term thin) and the accuracies (training and validation). Other logged columns
(the fusion's diagnostics) are left to history.csv itself.
"""

from __future__ import annotations

import csv
import io
import math

LOSS_STYLE = {"loss": ("#4c78a8", 2.0, "-"), "val_loss": ("#f58518", 2.0, "-")}
ACCURACY_STYLE = {"accuracy": ("#4c78a8", 2.0, "-"), "val_accuracy": ("#f58518", 2.0, "-")}


def read_history(path: str) -> dict:
    """{column: [float per epoch]} of a CSVLogger file; cells that are not numbers become NaN.

    Raises ValueError when the file has no header or no epoch rows."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} holds no epoch rows.")
    columns = {}
    for name in rows[0]:
        if name is None:
            continue
        values = []
        for row in rows:
            try:
                values.append(float(row.get(name, "")))
            except (TypeError, ValueError):
                values.append(math.nan)
        columns[name] = values
    return columns


def plot_history(path: str) -> bytes:
    """The PNG bytes of history.csv's loss and accuracy curves (raises ValueError on no rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_history(path)
    n = len(next(iter(history.values())))
    epochs = [e + 1 for e in history.get("epoch", range(n))] if "epoch" in history else list(range(1, n + 1))
    fig, (losses, accuracies) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for name, values in history.items():
        if name == "epoch":
            continue
        if name in LOSS_STYLE or name.startswith(("loss_", "val_loss_")):
            colour, width, style = LOSS_STYLE.get(name, (None, 0.9, "--" if name.startswith("val_") else ":"))
            losses.plot(epochs, values, style, color=colour, lw=width, label=name)
        elif name in ACCURACY_STYLE:
            colour, width, style = ACCURACY_STYLE[name]
            accuracies.plot(epochs, values, style, color=colour, lw=width, label=name)
    losses.set_title("losses", fontsize=9)
    accuracies.set_title("accuracy", fontsize=9)
    accuracies.set_ylim(0, 1)
    from matplotlib.ticker import MaxNLocator

    for ax in (losses, accuracies):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()

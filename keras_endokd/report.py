"""python -m keras_endokd.report: rebuild a run folder's self-contained report.html.

    python -m keras_endokd.report --run_dir=runs/latest
    python -m keras_endokd.report --run_dir=runs/latest --screenshot=docs/images/report.png

Reads what the run wrote (metrics.json, required; config.json, history.csv, export_report.json,
model_card.json and the PNGs, each optional) and writes DIR/report.html: headline and per-class
metrics, confusion matrix, calibration, ROC and PR curves, training curves, teachers against
student, Grad-CAM explanations, the out-of-distribution threshold, the deployment's sizes and
arena, and the model card. The page loads nothing from the network. A missing piece gets a
line saying what is missing.

--screenshot also opens the page in headless Chromium (Debian: apt-get install chromium),
writes a PNG of it, and fails when the page requested anything outside itself or a script
failed.
"""

from __future__ import annotations

import sys

from absl import flags

from keras_endokd.cli import UsageError, fail, parse_flags

FLAGS = flags.FlagValues()
flags.DEFINE_string("run_dir", None, "The run folder (the one holding metrics.json).",
                    flag_values=FLAGS)
flags.DEFINE_string("output", None, "Where to write the page (default: RUN_DIR/report.html).",
                    flag_values=FLAGS)
flags.DEFINE_string("screenshot", None, "Also write a PNG of the page, rendered by headless "
                    "Chromium, here.", flag_values=FLAGS)
flags.DEFINE_integer("screenshot_width", 1280, "Width of the screenshot in CSS pixels.",
                     flag_values=FLAGS)
flags.DEFINE_integer("screenshot_height", 0, "Height of the screenshot at most, in CSS pixels "
                     "(0: the whole page).", flag_values=FLAGS)


def report(run_dir: str, output=None, screenshot=None, width: int = 1280, height: int = 0) -> dict:
    """Writes the page (and the screenshot); returns {"report", "screenshot", "bytes"}."""
    import os

    from keras_endokd.clinical.html_report import ReportError, write_report

    try:
        path = write_report(run_dir, output)
    except ReportError as err:
        raise UsageError(str(err)) from None
    out = {"report": path, "bytes": os.path.getsize(path), "screenshot": None}
    if screenshot:
        from keras_endokd.clinical.headless_chromium import find_chromium, render_page

        if not find_chromium():
            raise UsageError(f"--screenshot={screenshot} needs Chromium, and none was found: "
                             "apt-get install chromium (Debian), or set CHROME_BIN.")
        if width < 320:
            raise UsageError(f"--screenshot_width={width}: give at least 320 pixels.")
        if height < 0:
            raise UsageError(f"--screenshot_height={height}: give 0 (the whole page) or more.")
        page = render_page(path, screenshot, width=width, max_height=height or None)
        problems = page["external_requests"] + page["exceptions"] + page["console_errors"]
        if problems:
            raise UsageError(f"{path} is not self-contained or has a failing script: "
                             + "; ".join(problems[:5]))
        out["screenshot"] = page["screenshot"]
    return out


def main(argv=None) -> int:
    _, code = parse_flags(FLAGS, argv, __doc__)
    if code is not None:
        return code
    try:
        if not FLAGS.run_dir:
            raise UsageError("--run_dir is required: the run folder holding metrics.json.")
        out = report(FLAGS.run_dir, FLAGS.output, FLAGS.screenshot, FLAGS.screenshot_width,
                     FLAGS.screenshot_height)
    except (UsageError, TimeoutError) as err:
        return fail(err)
    shot = f", screenshot {out['screenshot']}" if out["screenshot"] else ""
    print(f"[keras-endokd] wrote {out['report']} ({out['bytes'] / 1e6:.1f} MB){shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

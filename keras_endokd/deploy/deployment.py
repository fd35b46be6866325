"""A trained student -> the deployment files: prune, quantize, convert, check, microcontroller.

`export_student` writes these files into the run folder, all of them or none
(`deploy.export_folder`: staged, then moved in once every check passed):

    student_pruned.keras     the pruned, fine-tuned Keras 3 student (when --sparsity > 0)
    student_float32.tflite   float32 reference model (metadata attached)
    student_int8.tflite      int8 input and output, TFLITE_BUILTINS_INT8 only: the microcontroller
                             model (input byte q = pixel - 128; output probability (q+128)/256)
    student_android.tflite   uint8 RGB [1, H, W, 3] in, float32 probabilities out, with TFLite
                             metadata (labels, mean 0 / std 1: MediaPipe feeds the pixel bytes)
    labels.txt               one class per line, in output order
    model_data.cc/.h         student_int8.tflite as a 16-byte-aligned C array
    micro_op_resolver.h      a C++ function registering exactly the int8 model's operators, and
                             the measured tensor arena size (`deploy.micro.resolver_header`)
    model_card.json          what a deployer needs: input format, classes, sizes, accuracies,
                             the folded temperature, each file's OOD threshold (`deploy.model_card`)
    reliability_diagram_<float32|int8|android>.png   each model's calibration on the test split
    export_report.json       every stage's figures and checks

The probabilities are calibrated: the temperature fitted on the validation split is folded into
the last layer (no new operator), and every model's ECE, Brier score and ROC/PR-AUC are reported.

A failed export leaves the earlier export's files as they were and writes its report, with the
error, to export_failed.json. Each split is decoded and preprocessed once
(`deploy.export_images`); pruning, calibration and the checks slice those arrays. The checks
(`deploy.export_checks`) run before any file is moved in; one that fails raises
`ExportCheckError`, which names the flag to change and a command that passes.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shlex
import subprocess
import time
from typing import Optional, Sequence

import keras
import numpy as np

from keras_endokd import atomic_files
from keras_endokd.data.source import DatasetSource
from keras_endokd.deploy import micro
from keras_endokd.deploy.convert import (check_pixel_input, exported, input_quantization,
                                         probability_model, strip_strings, to_tflite)
from keras_endokd.deploy.export_calibration import calibrate, calibration_files
from keras_endokd.deploy.export_checks import (DEFAULT_MIN_AGREEMENT, RULE, TFLITE_FILES,
                                               ExportCheckError, batched, check_models, inference)
from keras_endokd.deploy.export_folder import REPORT, publish, record_failure, staging_folder
from keras_endokd.deploy.export_images import agreement_images, preprocessed_splits
from keras_endokd.deploy.granularity import choose_per_channel_layers
from keras_endokd.deploy.litert import TFLiteModel, latency_ms, op_names, tensor_types
from keras_endokd.deploy.metadata import write_metadata
from keras_endokd.deploy.model_card import (LICENSE, NAME, dataset_summary, description,
                                            model_card, version)
from keras_endokd.deploy.prune import kernel_sparsity, prune_student, teacher_logits
from keras_endokd.deploy.quantize import (MIN_REPRESENTATIVE, quantization_aware_training,
                                          representative_images)

ARENA_TARGET_BYTES = 256 * 1024  # at 128x128 input
MODEL_TARGET_BYTES = 64 * 1000  # int8 .tflite, at 128x128 input ("64 KB": the stricter reading)

__all__ = ["export_student", "ExportCheckError", "DEFAULT_MIN_AGREEMENT", "TFLITE_FILES",
           "ARENA_TARGET_BYTES", "MODEL_TARGET_BYTES"]


def _log(message: str) -> None:
    print(f"[keras-endokd] export: {message}", flush=True)


def _sizes(data: bytes) -> dict:
    return {"bytes": len(data), "gzip_bytes": len(gzip.compress(data, 9, mtime=0)),
            "sha256": hashlib.sha256(data).hexdigest()}


def _kb(n: int) -> str:
    return f"{n / 1000:.1f} KB"


def _yes(flag) -> str:
    return {True: "met", False: "NOT met", None: "unknown"}[flag]


def export_student(
    run_dir: str,
    student: keras.Model,
    source: DatasetSource,
    teachers: Sequence[keras.Model] = (),
    *,
    image_size: int,
    sparsity: float = 0.5,
    temperature: float = 4.0,
    qat: bool = False,
    per_tensor: bool = False,
    int8_max_bytes: int = MODEL_TARGET_BYTES,
    seed: int = 0,
    batch_size: int = 64,
    crop_border: bool = False,
    fine_tune_epochs: int = 3,
    command: str = "",
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    representative_count: int = 256,
    verbose: int = 0,
    preprocessed: Optional[dict] = None,
) -> dict:
    """Prunes, converts, checks and writes the deployment files of `student` into `run_dir`.

    Args:
      student: the trained Keras 3 student (logits out), input [image_size, image_size, 3].
      source: its dataset; training images fine-tune and calibrate, test images check.
      teachers: Keras 3 teachers, to keep distilling while pruning / QAT (none: CE only).
      sparsity: target kernel sparsity in [0, 1); 0 skips pruning.
      qat: quantization-aware training before the integer conversion (pruning-preserving).
      per_tensor: one weight scale per tensor in the integer models instead of one per output
        channel: smaller (the int8 student: ~60 KB instead of ~84 KB), slightly less faithful.
      int8_max_bytes: flash budget of student_int8.tflite. When the per-channel model is larger,
        only the layers that gain most keep per-channel scales (`deploy.granularity`); 0: no
        budget, per-channel everywhere. Not applied with qat (it learns per-channel ranges).
      min_agreement: least top-1 agreement of each .tflite with its Keras model, on up to 1,024
        images of all splits; a model fails when the upper bound of its agreement's Wilson 95%
        interval is below it (`deploy.export_checks`).
      command: the command line that produced the export, for the model card.
      preprocessed: splits already decoded and preprocessed at `image_size` with `crop_border`
        (`deploy.export_images.preprocessed`), by name; the others are decoded here.

    Returns export_report.json's content. Raises ExportCheckError when a check fails; the run
    folder then keeps the earlier export's files, and export_failed.json says what failed.
    """
    start = time.time()
    if not len(source.splits["test"]):
        raise ValueError("the test split is empty: nothing to check the converted models on")
    if tuple(student.input_shape[1:]) != (image_size, image_size, 3):
        raise ValueError(f"the student takes {student.input_shape[1:]}, not "
                         f"({image_size}, {image_size}, 3): pass its --image_size")
    if student.output_shape[-1] != source.num_classes:
        raise ValueError(f"the student has {student.output_shape[-1]} outputs but dataset "
                         f"'{source.name}' has {source.num_classes} classes")
    if qat and per_tensor:
        raise ValueError("per_tensor and qat do not combine: quantization-aware training learns "
                         "per-channel weight ranges, which a per-tensor conversion would discard")
    staging = staging_folder(run_dir)
    report = {
        "status": "running", "command": command,
        "settings": {"image_size": image_size, "sparsity": sparsity, "temperature": temperature,
                     "qat": qat, "per_tensor": per_tensor,
                     "int8_max_bytes": int8_max_bytes, "seed": seed, "batch_size": batch_size,
                     "crop_border": crop_border, "fine_tune_epochs": fine_tune_epochs,
                     "min_agreement": min_agreement, "teachers": len(teachers)},
        "dataset": dataset_summary(source),
    }
    try:
        report = _export(staging, student, source, teachers, report, start, image_size=image_size,
                         sparsity=sparsity, temperature=temperature, qat=qat,
                         per_tensor=per_tensor, int8_max_bytes=int8_max_bytes, seed=seed,
                         batch_size=batch_size, crop_border=crop_border,
                         fine_tune_epochs=fine_tune_epochs, min_agreement=min_agreement,
                         representative_count=representative_count, verbose=verbose,
                         preprocessed=preprocessed)
        if report.get("failures"):
            raise ExportCheckError("export check failed: " + "; ".join(report["failures"]) + ". "
                                   + _retry(run_dir, report["settings"],
                                            report["agreement_check"]["passing_min_agreement"]))
        publish(staging, run_dir)
    except BaseException as err:  # KeyboardInterrupt too: no staging folder is left behind
        report["status"] = "failed"
        report["error"] = f"{type(err).__name__}: {err}"
        path = record_failure(staging, run_dir, report)
        if isinstance(err, Exception):
            _log(f"failed; the earlier export's files, if any, are untouched; details in {path}")
        raise
    _log(f"wrote {len(report['files'])} files to {os.path.abspath(run_dir)} in "
         f"{report['seconds']:.0f}s")
    return report


def _retry(run_dir: str, settings: dict, threshold) -> str:
    """The way out of a failed agreement check: a command that passes (same settings, the
    threshold lowered to what the measured interval passes)."""
    if threshold is None:
        return "No flag makes this pass: see docs/deployment.md, \"Agreement checks\"."
    if not all(os.path.isfile(os.path.join(run_dir, f)) for f in ("student.keras", "config.json")):
        return f"To accept these models, export again with min_agreement={threshold:g}."
    flags = [f"--run_dir={shlex.quote(run_dir)}", f"--sparsity={settings['sparsity']:g}",
             f"--int8_max_bytes={settings['int8_max_bytes']}",
             f"--fine_tune_epochs={settings['fine_tune_epochs']}"]
    flags += ["--qat"] * settings["qat"] + ["--per_tensor"] * settings["per_tensor"]
    return ("To accept these models, re-export with a threshold their interval passes: "
            f"python -m keras_endokd.export {' '.join(flags)} --min_agreement={threshold:g}")


def _export(out_dir, student, source, teachers, report, start, *, image_size, sparsity,
            temperature, qat, per_tensor, int8_max_bytes, seed, batch_size, crop_border,
            fine_tune_epochs, min_agreement, representative_count, verbose, preprocessed):
    # 0. Every split decoded and preprocessed once; the stages below slice these arrays.
    t0 = time.time()
    splits = preprocessed_splits(source, image_size, crop_border, preprocessed)
    train, val, test = (splits[k] for k in ("train", "val", "test"))
    _log(f"{len(train)} / {len(val)} / {len(test)} train / val / test images at "
         f"{image_size}x{image_size} ({time.time() - t0:.0f}s)")
    common = dict(temperature=temperature, batch_size=batch_size, seed=seed, verbose=verbose)

    # 1. Prune, distilling from the teachers' cached logits.
    t0 = time.time()
    if sparsity > 0:
        _log(f"pruning to {sparsity:.0%} sparsity, fine-tuning {fine_tune_epochs} epochs")
    targets = (teacher_logits(teachers, train, batch_size)
               if teachers and (sparsity > 0 or qat) else None)
    pruned, prune_report = prune_student(student, train, val, sparsity=sparsity,
                                         teacher_logits=targets, epochs=fine_tune_epochs, **common)
    report["prune"] = prune_report
    sp = prune_report["sparsity"]
    if sparsity > 0:
        _log(f"pruned to {sp['pruned_layers']:.1%} of the pruned kernels ({sp['all_kernels']:.1%} "
             f"of all kernels, {sp['all_params']:.1%} of all parameters); validation accuracy "
             f"{prune_report['val_accuracy_before']:.3f} -> {prune_report['val_accuracy_after']:.3f}"
             f" ({time.time() - t0:.0f}s)")
    else:
        _log("pruning skipped (--sparsity=0)")

    # 2. Optional quantization-aware training of the pruned student. The splits are already
    # preprocessed: no second border crop.
    qat_model = None
    if qat:
        t0 = time.time()
        qat_model = quantization_aware_training(pruned, train, image_size=image_size,
                                                crop_border=False, teacher_logits=targets,
                                                epochs=fine_tune_epochs, prune_preserve=sparsity > 0,
                                                **common)
        report["qat"] = {"epochs": fine_tune_epochs, "prune_preserve": sparsity > 0,
                         "sparsity": kernel_sparsity(qat_model,
                                                     skip=prune_report.get("skipped_layers", ()))}
        _log(f"quantization-aware training: {fine_tune_epochs} epochs ({time.time() - t0:.0f}s)")

    # 3. Calibrate: the temperature fitted on the validation split, folded into the last layer.
    report["calibration"], calibrated = calibrate(pruned, val, qat_model is not None)
    c = report["calibration"]
    _log(f"temperature {c['temperature']:.3f} ({c['fitted_on']}; NLL {c['val_nll_before']:.3f} -> "
         f"{c['val_nll_after']:.3f}), folded: {c['folded']}")

    # 4. Convert: float32 from the Keras 3 student; integer models from it (or the QAT twin).
    t0 = time.time()
    _log("converting to TFLite: float32, int8 (choosing per-layer weight scales within the budget), "
         "Android uint8")
    representative = representative_images(train, image_size, representative_count, False, seed)
    probabilities = probability_model(calibrated)
    integer_source = qat_model if qat_model is not None else probabilities
    params = int(sum(np.prod(w.shape) for w in student.trainable_weights))
    meta = dict(labels=source.class_names, name=NAME, description=description(source, params),
                version=version(), license=LICENSE)
    with exported(probabilities) as float_source:  # one SavedModel for its conversions
        integer_converted = float_source if integer_source is probabilities else integer_source
        int8, int8_scales = _int8_model(integer_source, integer_converted, representative, per_tensor,
                                        0 if qat else int8_max_bytes)
        models = {
            "float32": write_metadata(to_tflite(float_source), **meta),
            "int8": int8,
            "android": write_metadata(to_tflite(integer_converted, representative, "uint8", "float32",
                                                per_channel=not per_tensor), **meta),
        }
    report["conversion"] = {
        "representative_images": len(representative),
        "weight_scales": int8_scales.pop("weight_scales"),
        "int8_weight_scales": int8_scales,
        "android_weight_scales": "per tensor" if per_tensor else "per output channel",
        "from": "tf_keras QAT model" if qat
        else "Keras 3 student (exported once as a SavedModel, TFLiteConverter.from_saved_model)",
        "input_quantization": {k: check_pixel_input(m) for k, m in models.items()},
        "output_quantization": {k: input_quantization(m, output=True) for k, m in models.items()},
        "tensor_types": {k: tensor_types(m) for k, m in models.items()},
        "ops": {k: op_names(m) for k, m in models.items()},
        "sizes": {TFLITE_FILES[k]: _sizes(m) for k, m in models.items()},
    }
    if len(representative) < MIN_REPRESENTATIVE:
        report["conversion"]["warning"] = (f"only {len(representative)} training images to "
                                           f"calibrate on (at least {MIN_REPRESENTATIVE} advised)")
    sizes = report["conversion"]["sizes"]
    _log("converted " + ", ".join(
        f"{k} {_kb(sizes[TFLITE_FILES[k]]['bytes'])} (gzip {_kb(sizes[TFLITE_FILES[k]]['gzip_bytes'])})"
        for k in models) + f" ({time.time() - t0:.0f}s)")

    # 5. Check every model in LiteRT: scores on the test split, agreement on all splits.
    t0 = time.time()
    agreeing, drawn = agreement_images(splits, seed=seed)
    checks, failures, passing = check_models(models, calibrated, student, qat_model, test, agreeing,
                                             source.class_names, min_agreement,
                                             temperature=report["calibration"]["temperature"])
    report["checks"] = checks
    report["agreement_check"] = {"rule": RULE, "min_agreement": min_agreement,
                                 "images": len(agreeing), "images_from": drawn,
                                 "interval": "Wilson score, 95%", "passing_min_agreement": passing}
    _log(f"checked: test accuracy on {len(test)} images, agreement on {len(agreeing)} images "
         f"(train {drawn['train']}, val {drawn['val']}, test {drawn['test']}): " + ", ".join(
             f"{k} accuracy {checks[k]['accuracy']:.3f} agreement {checks[k]['agreement']:.1%} "
             f"[{checks[k]['agreement_interval_95'][0]:.1%}, "
             f"{checks[k]['agreement_interval_95'][1]:.1%}]" for k in models)
         + f" ({time.time() - t0:.0f}s)")
    if failures:
        report["failures"] = failures
        return report
    # Median invoke() at batch 1 in LiteRT on this machine's CPU (experiments/bench_infer.py
    # measures it properly, against reference models): one thread, then two.
    report["latency"] = {f"{key}_ms_{n}_thread{'s' if n > 1 else ''}": round(latency_ms(data, n, runs=50), 3)
                         for key, data in models.items() for n in (1, 2)}

    # 6. Write the models, then the microcontroller files (into the staging folder).
    written, report["ood"] = calibration_files(out_dir, models, val, test)
    if sparsity > 0:
        written.append(atomic_files.save_model(pruned, os.path.join(out_dir, "student_pruned.keras")))
    for key, data in models.items():
        written.append(atomic_files.write_bytes(os.path.join(out_dir, TFLITE_FILES[key]), data))
    written.append(atomic_files.write_text(os.path.join(out_dir, "labels.txt"),
                                           "\n".join(source.class_names) + "\n"))
    report["micro"] = _micro(out_dir, models["int8"], image_size, written)
    m = report["micro"]
    arena = (f"arena {m['arena_used_bytes'] / 1024:.1f} KiB used, "
             f"{m['arena_size_recommended'] / 1024:.0f} KiB recommended" if m.get("arena_used_bytes")
             else "arena not measured (pip install tflite-micro)")
    _log(f"micro: {len(m['ops'])} ops, {arena}; targets: arena <= 256 KiB "
         f"{_yes(m['arena_target_met'])}, int8 model <= 64 KB {_yes(m['model_target_met'])}")

    # 7. Model card and report.
    report["model_card"] = model_card(report, source, params, image_size, crop_border)
    written.append(atomic_files.write_json(os.path.join(out_dir, "model_card.json"),
                                           report["model_card"]))
    report["files"] = sorted(os.path.basename(p) for p in written) + [REPORT]
    report["status"] = "ok"
    report["seconds"] = round(time.time() - start, 1)
    atomic_files.write_json(os.path.join(out_dir, REPORT), report)
    return report


def _int8_model(model, converted, representative, per_tensor: bool, max_bytes: int):
    """student_int8.tflite's bytes, within `max_bytes` when per-channel scales do not fit.

    `converted` is what `to_tflite` converts (`convert.exported(model)`). Returns (bytes,
    {"weight_scales": summary, ...details}). The layers that keep per-channel scales are chosen
    on the representative (training) images against the float model.
    """
    if per_tensor:
        return (strip_strings(to_tflite(converted, representative, "int8", "int8", per_channel=False)),
                {"weight_scales": "per tensor"})
    named = to_tflite(converted, representative, "int8", "int8")
    per_channel = strip_strings(named)
    if not max_bytes or len(per_channel) <= max_bytes:
        return per_channel, {"weight_scales": "per output channel"}
    per_tensor_model = strip_strings(to_tflite(converted, representative, "int8", "int8",
                                               per_channel=False))
    reference = batched(inference(model), representative)

    def error(candidate: bytes) -> float:
        probabilities = batched(TFLiteModel(candidate).predict, representative)
        return float(np.mean(np.sum((probabilities - reference) ** 2, axis=-1)))

    mixed, details = choose_per_channel_layers(per_tensor_model, per_channel, max_bytes, error,
                                               names_from=named)
    details["per_channel_bytes"] = len(per_channel)
    summary = (f"per output channel in {len(details['per_channel_layers'])} of "
               f"{len(details['per_channel_layers']) + len(details['per_tensor_layers'])} weighted "
               f"layers, per tensor elsewhere (a {max_bytes:,}-byte budget)")
    _log(f"int8 weight scales: {summary}: {', '.join(details['per_channel_layers']) or 'none'}; "
         f"{len(per_channel):,} -> {len(mixed):,} bytes, calibration error "
         f"{details['error_per_tensor']:.2e} (per tensor) -> {details['error']:.2e}")
    return mixed, {"weight_scales": summary, **details}


def _micro(out_dir, int8: bytes, image_size: int, written: list) -> dict:
    cc, h = micro.write_c_array(int8, out_dir, name="g_model_data", basename="model_data")
    with open(cc) as f:
        if micro.parse_c_array(f.read()) != int8:
            raise ExportCheckError(f"{cc} does not hold the bytes of student_int8.tflite")
    try:
        arena, failure = micro.measure_arena_isolated(int8), None
    except (RuntimeError, subprocess.TimeoutExpired) as err:  # the model files are still good
        arena, failure = None, str(err)
        _log(f"micro: arena not measured: {failure}")
    header = os.path.join(out_dir, "micro_op_resolver.h")
    written += [cc, h, atomic_files.write_text(header, micro.resolver_header(int8, arena))]
    out = {"files": ["model_data.cc", "model_data.h", "micro_op_resolver.h"],
           "ops": op_names(int8), "model_bytes": len(int8),
           "model_target_bytes": MODEL_TARGET_BYTES, "arena_target_bytes": ARENA_TARGET_BYTES,
           "targets_defined_at_image_size": 128, "image_size": image_size,
           "model_target_met": len(int8) <= MODEL_TARGET_BYTES}
    if arena is None:
        out.update(arena_used_bytes=None, arena_size_recommended=None, arena_target_met=None,
                   arena_note=failure or "tflite_micro is not installed: arena not measured")
    else:
        out.update(arena_used_bytes=arena["arena_used_bytes"],
                   arena_size_recommended=arena["arena_size_recommended"],
                   arena_target_met=arena["arena_size_recommended"] <= ARENA_TARGET_BYTES)
    return out

"""keras-endokd: knowledge distillation of endoscopy image classifiers into a ~52k-parameter CNN.

    import keras_endokd as kd

    source = kd.load_dataset("synthetic")                      # or kvasir_v2, hyper_kvasir, folder
    train = kd.make_dataset(source.splits["train"], 128, training=True)
    teachers = [kd.build_teacher("small_resnet", source.num_classes), ...]   # trained teachers
    distiller = kd.Distiller(student=kd.build_student(source.num_classes), teachers=teachers,
                             distillation_losses=kd.build_losses("response,relation"))
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(train, epochs=10)
    distiller.student.save("student.keras")
"""

import importlib

# The public names, by the module that defines them. They are imported on first use (PEP 562):
# the data commands, every --help and `keras_endokd.atomic_files` then run without importing TensorFlow,
# which costs ~7 s of CPU per process on 2 cores.
_EXPORTS = {
    "keras_endokd.data": ("DATASET_NAMES", "DatasetSource", "Split", "load_dataset"),
    "keras_endokd.data.tf_datasets": ("make_dataset", "preprocess_image"),
    "keras_endokd.distill.attention_transfer": ("AttentionTransfer",),
    "keras_endokd.distill.base": ("DistillationTerm",),
    "keras_endokd.distill.distiller": ("Distiller",),
    "keras_endokd.distill.fitnets": ("FitNetsDistillation",),
    "keras_endokd.distill.registry": ("KD_METHODS", "build_losses"),
    "keras_endokd.distill.fusion_distillation": ("FusionDistillation", "TeacherFusion"),
    "keras_endokd.distill.response": ("ResponseDistillation",),
    "keras_endokd.distill.rkd": ("RelationalDistillation",),
    "keras_endokd.models.student": ("build_student",),
    "keras_endokd.models.teachers": ("DEFAULT_TEACHERS", "TEACHER_NAMES", "build_teacher"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__version__ = "0.1.0"

__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_endokd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is an ordinary one
    return value


def __dir__():
    return sorted({*globals(), *__all__})

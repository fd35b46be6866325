"""keras-endokd: knowledge distillation of endoscopy image classifiers into a ~52k-parameter CNN.

    import keras_endokd as kd

    source = kd.load_dataset("synthetic")                      # or kvasir_v2, hyper_kvasir, folder
    train = kd.make_dataset(source.splits["train"], 128, training=True)
    teachers = [kd.build_teacher("small_resnet", source.num_classes), ...]   # trained teachers
    distiller = kd.Distiller(student=kd.build_student(source.num_classes), teachers=teachers,
                             losses=kd.build_losses("response,relation"))
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(train, epochs=10)
    distiller.student.save("student.keras")
"""

from keras_endokd.data import DATASET_NAMES, DatasetSource, Split, load_dataset
from keras_endokd.data.pipeline import make_dataset, preprocess_image
from keras_endokd.distill.attention_transfer import AttentionTransfer
from keras_endokd.distill.base import DistillationTerm
from keras_endokd.distill.distiller import Distiller
from keras_endokd.distill.fitnets import FitNetsDistillation
from keras_endokd.distill.fusion import TeacherFusion
from keras_endokd.distill.registry import KD_METHODS, build_losses
from keras_endokd.distill.relation import FusionDistillation
from keras_endokd.distill.response import ResponseDistillation
from keras_endokd.distill.rkd import RelationalDistillation
from keras_endokd.models.student import build_student
from keras_endokd.models.teachers import DEFAULT_TEACHERS, TEACHER_NAMES, build_teacher

__version__ = "0.1.0"

__all__ = [
    "AttentionTransfer",
    "DATASET_NAMES",
    "DEFAULT_TEACHERS",
    "DatasetSource",
    "DistillationTerm",
    "Distiller",
    "FitNetsDistillation",
    "FusionDistillation",
    "KD_METHODS",
    "RelationalDistillation",
    "ResponseDistillation",
    "Split",
    "TEACHER_NAMES",
    "TeacherFusion",
    "build_losses",
    "build_student",
    "build_teacher",
    "load_dataset",
    "make_dataset",
    "preprocess_image",
]

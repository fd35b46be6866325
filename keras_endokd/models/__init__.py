"""Students and teachers. Importing any of these modules registers `FusedBatchNormalization`, the
layer the student and the small teachers are built with, so that `keras.saving.load_model` reads
their files."""

from keras_endokd.models import fused_batchnorm  # noqa: F401

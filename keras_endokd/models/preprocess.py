"""ImageNet input normalization as a serializable layer.

`keras.applications.*.preprocess_input` are plain functions; wrapping them in a `Lambda` would
make saved teachers unloadable with `safe_mode=True` (Lambda deserialization runs code). This
layer does the same arithmetic with `keras.ops` and is registered, so it loads safely.
"""

import keras

_MODES = ("caffe", "torch", "tf", "none")
_MEAN_RGB = (0.485, 0.456, 0.406)
_STD_RGB = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="keras_endokd")
class ImageNetPreprocess(keras.layers.Layer):
    """RGB pixels in [0, 255] -> what a keras.applications backbone expects.

    Modes (as in `keras.applications.imagenet_utils.preprocess_input`):
      caffe: RGB->BGR, minus the ImageNet BGR mean (ResNet50).
      torch: /255, minus mean, divided by std per channel (DenseNet121).
      tf:    scaled to [-1, 1] (MobileNetV2).
      none:  unchanged (EfficientNet normalizes inside).
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")
        self.mode = mode

    def call(self, x):
        if self.mode == "caffe":
            return keras.ops.flip(x, axis=-1) - keras.ops.convert_to_tensor(_CAFFE_MEAN_BGR, x.dtype)
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(_MEAN_RGB, x.dtype)
            std = keras.ops.convert_to_tensor(_STD_RGB, x.dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "tf":
            return x / 127.5 - 1.0
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}

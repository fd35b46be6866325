"""Any model, any labels: softmax outputs read as logits, one-hot labels, subclassed models, and
every loss's configuration saved and reloaded inside a Distiller."""

import keras
import numpy as np
import pytest

from keras_endokd import Distiller
from keras_endokd.distill.attention_transfer import AttentionTransfer
from keras_endokd.distill.fitnets import FitNetsDistillation
from keras_endokd.distill.fusion_distillation import FusionDistillation
from keras_endokd.distill.response import ResponseDistillation
from keras_endokd.distill.rkd import RelationalDistillation
from keras_endokd.models.taps import ends_in_softmax

SIZE, CLASSES = 16, 3


def _model(name, widths=(8, 16), head=None, prefix=None):
    """Conv blocks `<prefix>_block<i>` (prefix: the name), then a Dense head: logits, or `head` =
    "dense" (Dense with a softmax), "softmax" (a Softmax layer) or "activation" (Activation)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = inputs
    for i, width in enumerate(widths, start=1):
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu",
                                name=f"{prefix or name}_block{i}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(CLASSES, activation="softmax" if head == "dense" else None, name=f"{name}_head")(x)
    if head == "softmax":
        x = keras.layers.Softmax()(x)
    elif head == "activation":
        x = keras.layers.Activation("softmax")(x)
    return keras.Model(inputs, x, name=name)


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, SIZE, SIZE, 3)).astype("float32"), rng.integers(0, CLASSES, n).astype("int32")


def _np(x):
    return float(keras.ops.convert_to_numpy(x))


def _losses(s="s", t="t"):
    """The terms that read logits through a softmax (Hinton KD, the fusion's weighted KD and
    confidence weights), where log(clip(p)) stands in exactly for the logits."""
    return [ResponseDistillation(temperature=4.0),
            FusionDistillation("confidence", f"{s}_block2", f"{t}_block2", width=8, num_heads=2)]


@pytest.mark.parametrize("head", ["dense", "softmax", "activation"])
def test_a_softmax_model_trains_as_its_logits_twin(head):
    """Same weights, same losses: log(clip(p)) as logits gives the loss of the logits z, so the
    softmax student trains as its twin (the student loss is picked from its output)."""
    x, y = _data()
    distillers = []
    for ending in (None, head):
        teacher, student = _model("t", head=ending), _model("s", (4, 8), head=ending)
        assert ends_in_softmax(student) == (ending is not None)
        distillers.append(Distiller(teacher=teacher, student=student, distillation_losses=_losses()))
    twin, soft = distillers
    for a, b in ((twin.student, soft.student), (twin.teachers[0], soft.teachers[0])):
        b.set_weights(a.get_weights())
    for a, b in zip(twin.distillation_losses, soft.distillation_losses):
        b.set_weights(a.get_weights())
    for d in distillers:
        d.compile(optimizer=keras.optimizers.Adam(1e-2))
    losses = [_np(d.compute_loss(x, y, d(x), training=True)) for d in distillers]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    histories = [d.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0).history for d in distillers]
    assert histories[0]["loss"][-1] < histories[0]["loss"][0]
    np.testing.assert_allclose(histories[1]["loss"], histories[0]["loss"], rtol=1e-3)
    with pytest.raises(ValueError, match="ends in a softmax.*from_logits=True"):
        soft.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def test_precomputed_outputs_of_a_softmax_teacher_are_read_as_logits_too():
    x, y = _data()
    d = Distiller(teacher=_model("t", head="dense"), student=_model("s", (4, 8)), distillation_losses=_losses())
    d.compile(optimizer="adam")
    live = _np(d.compute_loss(x, y, d(x), training=True))
    batch = {"image": x, "teachers": [g(x, training=False) for g in d.teacher_tap_models]}
    assert _np(d.compute_loss(batch, y, d(batch), training=True)) == pytest.approx(live, rel=1e-5)


def test_one_hot_labels_with_categorical_crossentropy_give_the_sparse_loss():
    x, y = _data()
    d = Distiller(teachers=[_model("t"), _model("t2", (4, 16), prefix="t")], student=_model("s", (4, 8)),
                  distillation_losses=_losses())
    d.compile(optimizer="adam")
    sparse = _np(d.compute_loss(x, y, d(x), training=True))
    one_hot = keras.ops.convert_to_numpy(keras.ops.one_hot(y, CLASSES))
    d.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    assert _np(d.compute_loss(x, one_hot, d(x), training=True)) == pytest.approx(sparse, rel=1e-5)
    history = d.fit(x, one_hot, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(history["loss_fusion_ce"][0])


def test_a_subclassed_student_distils_its_final_output_and_is_told_why_not_its_layers():
    class Student(keras.Model):
        def __init__(self):
            super().__init__(name="subclassed")
            self.flatten, self.dense = keras.layers.Flatten(), keras.layers.Dense(CLASSES)

        def call(self, inputs):
            return self.dense(self.flatten(inputs))

    x, y = _data()
    d = Distiller(teacher=_model("t"), student=Student(), distillation_losses=[ResponseDistillation()])
    d.compile(optimizer="adam")
    history = d.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    assert history["loss_response"][-1] < history["loss_response"][0]
    with pytest.raises(ValueError, match="layer\\(s\\) \\['feat_2'\\] of the student 'subclassed', which has no "
                                         "symbolic graph"):
        Distiller(teacher=_model("t"), student=Student(), distillation_losses=[FitNetsDistillation()])


def _every_loss():
    return [
        ResponseDistillation(temperature=3.0, mixing_weights=[2.0, 1.0], loss_weights={"loss_response": 0.5}),
        FitNetsDistillation("s_block1", "t_block2", loss_weights={"loss_feature": 2.0}),
        AttentionTransfer(["s_block1", "s_block2"], ["t_block1", "t_block2"]),
        RelationalDistillation("s_block2", "t_block2"),
        FusionDistillation("attention", "s_block2", "t_block2", width=8, num_heads=2, temperature=2.0, centre=False),
        keras.distillation.LogitsDistillation(temperature=2.0, loss=keras.losses.KLDivergence()),
        keras.distillation.FeatureDistillation(loss="mse", teacher_layer_name="t_block2", student_layer_name="s_block2"),
    ]


def test_every_loss_round_trips_its_config_and_reloads_inside_a_distiller(tmp_path):
    x, y = _data()
    for loss in _every_loss()[:5]:  # ours: get_config / from_config give the same configuration
        again = type(loss).from_config(loss.get_config())
        assert again.get_config() == loss.get_config() and again.loss_weights == loss.loss_weights
    d = Distiller(teachers=[_model("t"), _model("t2", (4, 16), prefix="t")], student=_model("s", (4, 16)),
                  distillation_losses=_every_loss(), distillation_loss_weights=[1, 2, 1, 1, 1, 0.5, 0.5],
                  student_loss_weight=0.25)
    d.compile(optimizer="adam")
    d.fit(x, y, batch_size=8, epochs=1, verbose=0)
    d.save(tmp_path / "distiller.keras")
    again = keras.saving.load_model(tmp_path / "distiller.keras", safe_mode=True)
    assert isinstance(again, Distiller) and again.student_loss_weight == 0.25
    assert again.distillation_loss_weights == [1, 2, 1, 1, 1, 0.5, 0.5]
    for a, b in zip(d.distillation_losses, again.distillation_losses):
        assert type(a) is type(b)
        assert keras.saving.serialize_keras_object(a) == keras.saving.serialize_keras_object(b)
    assert again.objective() == d.objective()
    before, after = (_np(m.compute_loss(x, y, m(x), training=True)) for m in (d, again))
    assert after == pytest.approx(before, rel=1e-5)

"""The Distiller: trains only the student (and its adapters), saves the student alone."""

import keras
import numpy as np
import pytest

from keras_endokd.distill.distiller import Distiller
from keras_endokd.distill.registry import build_losses
from keras_endokd.models.student import build_student
from keras_endokd.models.teachers import build_teacher

SIZE, CLASSES = 32, 3


def _data(n=48, seed=0):
    """Images whose colour gives the class away, so a few steps can learn something."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    colours = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220]], "float32")
    x = colours[y][:, None, None, :] + rng.normal(0, 30, (n, SIZE, SIZE, 3))
    return np.clip(x, 0, 255).astype("float32"), y.astype("int32")


def _distiller(kd="response,feature,relation"):
    teachers = [build_teacher("tiny_resnet", CLASSES, SIZE), build_teacher("small_plaincnn", CLASSES, SIZE)]
    d = Distiller(student=build_student(CLASSES, SIZE), teachers=teachers, distillation_losses=build_losses(kd, heads=2))
    d.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    return d


def test_distillation_lowers_the_loss_and_trains_only_the_student():
    x, y = _data()
    d = _distiller()
    teacher_before = [w.numpy().copy() for t in d.teachers for w in t.weights]
    student_before = [w.numpy().copy() for w in d.student.trainable_weights]
    history = d.fit(x, y, batch_size=16, epochs=6, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert history["loss_relation"][-1] < history["loss_relation"][0]
    for before, w in zip(teacher_before, [w for t in d.teachers for w in t.weights]):
        np.testing.assert_array_equal(before, w.numpy())
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(student_before, d.student.trainable_weights))
    trained = {id(v) for v in d.trainable_weights}
    assert not trained & {id(v) for t in d.teachers for v in t.weights}


def test_fit_traces_the_train_step_once(monkeypatch):
    """Optimizer and metric variables exist before tracing: Keras would otherwise create them in
    the first step, and TensorFlow traces a step that creates variables twice."""
    traces = []
    step = Distiller.train_step
    monkeypatch.setattr(Distiller, "train_step", lambda self, data: traces.append(1) or step(self, data))
    x, y = _data()
    _distiller().fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert len(traces) == 1


def test_each_term_is_a_metric_and_validation_reports_the_student_alone():
    x, y = _data()
    history = _distiller().fit(x, y, batch_size=16, epochs=1, validation_data=(x, y), verbose=0).history
    for term in ("student_loss", "distillation_loss", "total_loss", "loss_response", "loss_feature",
                 "loss_attention", "loss_relation", "loss_relation_rkd", "loss_fusion_ce",
                 "val_student_loss", "val_total_loss", "val_accuracy"):
        assert term in history, term
    assert not [k for k in history if k.startswith("val_loss_") or k == "val_distillation_loss"]
    # evaluation scores the student alone: its total is its loss on the labels
    assert history["val_total_loss"] == pytest.approx(history["val_student_loss"])
    assert history["val_loss"] == pytest.approx(history["val_student_loss"])


def test_attention_fusion_weights_change_when_trained():
    x, y = _data()
    d = _distiller("relation")
    attention = d.distillation_losses[0].teacher_fusion.attention
    before = [w.numpy().copy() for w in attention.weights]
    d.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, attention.weights))


def test_precomputed_teacher_outputs_give_the_same_loss_as_live_teachers():
    x, y = _data(16)
    d = _distiller("response,relation")
    live = d.compute_loss(x, y, d(x, training=False), training=True)
    cached = [{k: v for k, v in g(x, training=False).items()} for g in d._graphs.teachers]
    batch = {"image": x, "teachers": cached}
    precomputed = d.compute_loss(batch, y, d(batch, training=False), training=True)
    assert float(precomputed) == pytest.approx(float(live), rel=1e-5)
    assert set(d.teacher_taps) == {"feat_3", "logits"}


def test_student_saves_alone_and_reloads_identically(tmp_path):
    x, y = _data(16)
    d = _distiller()
    d.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "student.keras")
    d.student.save(path)
    student = keras.saving.load_model(path, safe_mode=True)
    assert not [l.name for l in student.layers if "teacher" in l.name or "adapter" in l.name]
    np.testing.assert_allclose(student.predict(x, verbose=0), d.predict(x, verbose=0), atol=1e-5)


def test_distiller_saves_and_reloads(tmp_path):
    x, y = _data(16)
    d = _distiller("response,relation")
    d.fit(x, y, batch_size=16, epochs=1, verbose=0)
    d.save(tmp_path / "distiller.keras")
    again = keras.saving.load_model(tmp_path / "distiller.keras", safe_mode=True)
    np.testing.assert_allclose(again.predict(x, verbose=0), d.predict(x, verbose=0), atol=1e-5)
    again.fit(x, y, batch_size=16, epochs=1, verbose=0)


def test_incompatible_teacher_is_rejected():
    with pytest.raises(ValueError, match="same images"):
        Distiller(student=build_student(CLASSES, SIZE), teacher=build_teacher("tiny_resnet", CLASSES, 64),
                  distillation_losses=build_losses("response"))
    with pytest.raises(ValueError, match="classes"):
        Distiller(student=build_student(CLASSES, SIZE), teacher=build_teacher("tiny_resnet", 5, SIZE),
                  distillation_losses=build_losses("response"))


def test_sample_and_class_weights_reach_every_term():
    """Zero weights silence every term, not only the cross-entropy; a weight of 2 on one sample
    of two gives that sample's own loss (Keras' sum(w * l) / B)."""
    x, y = _data(8)
    d = _distiller("response,feature,relation,rkd")
    pred = d(x, training=False)
    assert float(d.compute_loss(x, y, pred, sample_weight=np.zeros(8, "float32"), training=True)) == 0.0
    unweighted = float(d.compute_loss(x, y, pred, training=True))
    ones = float(d.compute_loss(x, y, pred, sample_weight=np.ones(8, "float32"), training=True))
    assert ones == pytest.approx(unweighted, rel=1e-5)
    # class_weight reaches the terms too: through fit, as Keras turns it into sample weights
    history = d.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False,
                    class_weight={0: 0.0, 1: 0.0, 2: 0.0}).history
    for term in ("loss_response", "loss_feature", "loss_attention", "loss_relation", "loss_relation_kd",
                 "loss_relation_rkd", "loss_fusion_ce", "loss_rkd"):
        assert history[term][0] == 0.0, term


def test_warm_up_trains_the_fusion_and_its_head_alone():
    """Distiller.warm_up_terms: the fusion's classification loss falls over its epochs, the fusion
    and its head move, and the student, its adapter and the teachers do not."""
    import tensorflow as tf

    x, y = _data(64)
    d = _distiller("relation")
    term = d.distillation_losses[0]
    frozen = [*d.student.weights, *term.adapter.weights, *(w for t in d.teachers for w in t.weights)]
    frozen_before = [w.numpy().copy() for w in frozen]
    moved = [*term.teacher_fusion.trainable_weights, *term.head.trainable_weights]
    moved_before = [w.numpy().copy() for w in moved]
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    first = d.warm_up_terms(batches, 1, learning_rate=3e-3)
    last = d.warm_up_terms(batches, 8, learning_rate=3e-3)
    assert set(first) == {"loss_fusion_ce"}
    assert last["loss_fusion_ce"] < 0.5 * first["loss_fusion_ce"]
    for before, w in zip(frozen_before, frozen):
        np.testing.assert_array_equal(before, w.numpy())
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(moved_before, moved))
    assert _distiller("response").warm_up_terms(batches, 2) == {}  # no term with a warm-up

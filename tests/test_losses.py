"""Distillation losses on small tensors with known values."""

import math

import keras
import numpy as np
import pytest

from keras_endokd.distill.attention_transfer import AttentionTransfer, attention_transfer_loss
from keras_endokd.distill.fitnets import FitNetsDistillation
from keras_endokd.distill.fusion_distillation import FusionDistillation, TeacherFusion, confidence_weights
from keras_endokd.distill.registry import build_losses, parse_kd
from keras_endokd.distill.response import ResponseDistillation, soft_kl
from keras_endokd.distill.rkd import RelationalDistillation, rkd_angle_loss, rkd_distance_loss, rkd_loss

ops = keras.ops


def _np(x):
    return float(keras.ops.convert_to_numpy(x))


def test_response_kd_of_identical_logits_is_zero():
    z = np.random.default_rng(0).normal(size=(6, 8)).astype("float32")
    assert _np(soft_kl(z, z, 4.0)) == pytest.approx(0.0, abs=1e-6)


def test_response_kd_matches_a_hand_computed_two_class_example():
    teacher = np.array([[0.0, math.log(3.0)]], "float32")  # softmax = [1/4, 3/4]
    student = np.array([[0.0, 0.0]], "float32")  # softmax = [1/2, 1/2]
    # KL([1/4, 3/4] || [1/2, 1/2]) = 1/4 ln(1/2) + 3/4 ln(3/2) = 3/4 ln 3 - ln 2
    assert _np(soft_kl(teacher, student, 1.0)) == pytest.approx(0.75 * math.log(3) - math.log(2), rel=1e-5)
    # At T = 2 the teacher's softmax is [1, sqrt 3] / (1 + sqrt 3); the loss is scaled by T^2.
    p = np.array([1.0, math.sqrt(3.0)]) / (1.0 + math.sqrt(3.0))
    expected = 4.0 * float(np.sum(p * np.log(p / 0.5)))
    assert _np(soft_kl(teacher, student, 2.0)) == pytest.approx(expected, rel=1e-5)


def test_response_kd_agrees_with_keras_logits_distillation_given_a_kl_instance():
    rng = np.random.default_rng(1)
    t, s = rng.normal(size=(16, 8)).astype("float32"), rng.normal(size=(16, 8)).astype("float32")
    for temperature in (1.0, 4.0):
        ours = ResponseDistillation(temperature).compute_terms([{"logits": t}], {"logits": s})["loss_response"]
        keras_kd = keras.distillation.LogitsDistillation(temperature=temperature, loss=keras.losses.KLDivergence())
        assert _np(ours) == pytest.approx(_np(keras_kd.compute_loss(t, s)), rel=1e-4)


def test_response_kd_averages_and_weights_teachers():
    rng = np.random.default_rng(2)
    s, t1, t2 = (rng.normal(size=(4, 3)).astype("float32") for _ in range(3))
    a, b = _np(soft_kl(t1, s, 2.0)), _np(soft_kl(t2, s, 2.0))
    teachers = [{"logits": t1}, {"logits": t2}]
    assert _np(ResponseDistillation(2.0).compute_terms(teachers, {"logits": s})["loss_response"]) == pytest.approx((a + b) / 2, rel=1e-5)
    weighted = ResponseDistillation(2.0, mixing_weights=[3.0, 1.0]).compute_terms(teachers, {"logits": s})
    assert _np(weighted["loss_response"]) == pytest.approx(0.75 * a + 0.25 * b, rel=1e-5)


def test_fitnets_with_identity_adapter_and_pooled_teacher():
    loss = FitNetsDistillation("feat_2", "feat_2")
    loss.build_for({"feat_2": (None, 2, 2, 2)}, [{"feat_2": (None, 4, 4, 2)}], num_classes=3)
    loss.adapters[0].set_weights([np.eye(2, dtype="float32")[None, None], np.zeros(2, "float32")])
    student = {"feat_2": np.ones((1, 2, 2, 2), "float32")}
    teacher = [{"feat_2": np.full((1, 4, 4, 2), 3.0, "float32")}]  # average-pooled 4x4 -> 2x2
    assert _np(loss.compute_terms(teacher, student)["loss_feature"]) == pytest.approx(4.0)


def test_attention_transfer_known_value():
    student = np.zeros((1, 2, 2, 1), "float32")
    student[0, 0, 0, 0] = 2.0  # attention [1, 0, 0, 0] after normalization
    teacher = np.ones((1, 2, 2, 3), "float32")  # attention [1/2, 1/2, 1/2, 1/2]
    assert _np(attention_transfer_loss(student, teacher)) == pytest.approx(0.25, rel=1e-5)
    assert _np(attention_transfer_loss(teacher, teacher * 5)) == pytest.approx(0.0, abs=1e-7)
    terms = AttentionTransfer(student_layer_names=("feat_1",)).compute_terms([{"feat_1": teacher}], {"feat_1": student})
    assert _np(terms["loss_attention"]) == pytest.approx(0.25, rel=1e-5)
    # beta / 2 * SUM over taps (Zagoruyko & Komodakis' code, mdistiller), not the mean: a second
    # tap where student and teacher agree leaves the sum unchanged (the mean would halve it).
    two = AttentionTransfer(student_layer_names=("feat_1", "feat_2"))
    terms = two.compute_terms([{"feat_1": teacher, "feat_2": teacher}], {"feat_1": student, "feat_2": teacher * 2})
    assert _np(terms["loss_attention"]) == pytest.approx(0.25, rel=1e-5)
    assert two.loss_weights["loss_attention"] == 500.0  # beta / 2, beta = 1000


def _rkd_reference(s, t, weights=None):
    """Loop implementation of Park et al.'s distance and angle terms (huber, delta = 1); with
    per-sample weights, each pair or triple weighs the product of its samples' weights."""
    w = np.ones(len(s)) if weights is None else np.asarray(weights, np.float64)

    def huber(a, b):
        d = np.abs(a - b)
        h = np.where(d < 1, 0.5 * d**2, d - 0.5)
        product = w[:, None] * w[None, :] if h.ndim == 2 else w[:, None, None] * w[None, :, None] * w[None, None, :]
        return (h * product).mean()

    def dist(e):
        n = len(e)
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
        return d / (d.sum() / (n * n - n))

    def angle(e):
        n = len(e)
        out = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u, v = e[i] - e[j], e[k] - e[j]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    out[i, j, k] = 0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv)
        return out

    return huber(dist(s), dist(t)), huber(angle(s), angle(t))


def test_rkd_matches_loop_reference_and_is_scale_invariant():
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(5, 4)).astype("float32"), rng.normal(size=(5, 6)).astype("float32")
    ref_d, ref_a = _rkd_reference(s.astype(np.float64), t.astype(np.float64))
    assert _np(rkd_distance_loss(s, t)) == pytest.approx(ref_d, rel=1e-3)
    assert _np(rkd_angle_loss(s, t)) == pytest.approx(ref_a, rel=1e-3)
    assert _np(rkd_distance_loss(s, 3 * s)) == pytest.approx(0.0, abs=1e-5)
    assert _np(rkd_angle_loss(s, 3 * s)) == pytest.approx(0.0, abs=1e-5)
    # Park et al.'s (and mdistiller's) lambda_D = 25, lambda_A = 50.
    assert _np(rkd_loss(s, t)) == pytest.approx(25 * ref_d + 50 * ref_a, rel=1e-3)


def test_confidence_weights_favour_the_teacher_that_knows_the_label():
    right = np.array([[5.0, 0.0, 0.0]], "float32")
    wrong = np.array([[0.0, 5.0, 0.0]], "float32")
    w = keras.ops.convert_to_numpy(confidence_weights([right, wrong, wrong], np.array([0])))
    assert w.sum() == pytest.approx(1.0, abs=1e-6)
    assert w[0, 0] > w[0, 1] == pytest.approx(w[0, 2])


@pytest.mark.parametrize("mode", ["attention", "mean", "confidence"])
def test_fusion_output_shape(mode):
    fusion = TeacherFusion(mode, width=16, num_heads=2)
    fusion.build_for((None, 4, 4, 8), [(None, 4, 4, 12), (None, 8, 8, 6)])
    rng = np.random.default_rng(4)
    teachers = [rng.normal(size=(3, 4, 4, 12)).astype("float32"), rng.normal(size=(3, 8, 8, 6)).astype("float32")]
    logits = [rng.normal(size=(3, 5)).astype("float32")] * 2
    out = fusion(teachers, rng.normal(size=(3, 4, 4, 8)).astype("float32"), logits, np.array([0, 1, 2]))
    assert tuple(out.shape) == (3, 4, 4, 16)
    if mode == "attention":
        assert tuple(fusion.last_attention_scores.shape) == (3, 16, 2, 1, 2)
    if mode == "mean":
        projected = [fusion.projections[0](teachers[0]), ops.average_pool(fusion.projections[1](teachers[1]), 2, 2)]
        np.testing.assert_allclose(ops.convert_to_numpy(out), ops.convert_to_numpy((projected[0] + projected[1]) / 2), atol=1e-5)


def test_attention_fusion_attends_over_the_teachers_at_each_position_only():
    """The fused map equals a plain MultiHeadAttention run on every position as its own sequence
    (the student's feature as the one query, the K projected teacher features as keys/values)."""
    fusion = TeacherFusion("attention", width=16, num_heads=2)
    fusion.build_for((None, 4, 4, 8), [(None, 4, 4, 12), (None, 4, 4, 6)])
    rng = np.random.default_rng(5)
    teachers = [rng.normal(size=(3, 4, 4, c)).astype("float32") for c in (12, 6)]
    student = rng.normal(size=(3, 4, 4, 8)).astype("float32")
    fused = ops.convert_to_numpy(fusion(teachers, student))

    per_position = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8, output_shape=16)
    per_position.build(query_shape=(None, 1, 8), value_shape=(None, 2, 16))
    per_position.set_weights(fusion.attention.get_weights())
    kv = ops.stack([p(t) for p, t in zip(fusion.projections, teachers)], axis=3)  # [3, 4, 4, 2, 16]
    kv = ops.reshape(kv, (-1, 2, 16))
    expected = per_position(ops.reshape(student, (-1, 1, 8)), kv, kv)
    np.testing.assert_allclose(fused, ops.convert_to_numpy(ops.reshape(expected, (3, 4, 4, 16))), atol=1e-5)


def test_registry_composes_methods_and_rejects_unknown_names():
    losses = build_losses("response,feature,relation", temperature=2.0, fusion="mean", heads=2,
                          loss_weights={"loss_feature": 0.5})
    assert [type(l).__name__ for l in losses] == ["ResponseDistillation", "FitNetsDistillation", "AttentionTransfer", "FusionDistillation"]
    assert losses[1].loss_weights["loss_feature"] == 0.5
    assert losses[0].temperature == 2.0 and losses[3].fusion == "mean"
    assert build_losses("none") == []
    with pytest.raises(ValueError, match="Expected one or more of"):
        parse_kd("response,crd")
    with pytest.raises(ValueError, match="cannot be combined"):
        parse_kd("none,response")


def test_sample_weights_reduce_each_term_as_keras_reduces_the_cross_entropy():
    """sum(w_i l_i) / B: a weight of 2 on the first of two samples gives its own loss."""
    rng = np.random.default_rng(3)
    t, s = rng.normal(size=(2, 5)).astype("float32"), rng.normal(size=(2, 5)).astype("float32")
    loss = ResponseDistillation(2.0)
    first = loss.compute_terms([{"logits": t[:1]}], {"logits": s[:1]})["loss_response"]
    weighted = loss.compute_terms([{"logits": t}], {"logits": s}, sample_weight=np.array([2.0, 0.0], "float32"))
    assert _np(weighted["loss_response"]) == pytest.approx(_np(first), rel=1e-5)
    # RKD: a sample of weight 0 takes every pair and triple it is in out of the mean
    e_s, e_t = rng.normal(size=(4, 6)).astype("float32"), rng.normal(size=(4, 6)).astype("float32")
    w = np.array([1.0, 1.0, 1.0, 0.0], "float32")
    ref_d, ref_a = _rkd_reference(e_s.astype(np.float64), e_t.astype(np.float64), weights=w)
    assert _np(rkd_distance_loss(e_s, e_t, w)) == pytest.approx(ref_d, rel=1e-3)
    assert _np(rkd_angle_loss(e_s, e_t, w)) == pytest.approx(ref_a, rel=1e-3)


# Reference implementations, their formulas written out in numpy on fixed inputs: mdistiller
# (megvii-research/mdistiller, mdistiller/distillers/{KD,FitNet,AT,RKD}.py) and CA-MKD
# (Zhang, Chen & Wang 2022). Layouts are NHWC here where mdistiller's tensors are NCHW.

def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _mdistiller_kd(logits_student, logits_teacher, temperature):
    """kd_loss: F.kl_div(log_softmax(s/T), softmax(t/T), reduction="none").sum(1).mean() * T^2."""
    log_pred_student = _log_softmax(logits_student / temperature)
    pred_teacher = np.exp(_log_softmax(logits_teacher / temperature))
    return (pred_teacher * (np.log(pred_teacher) - log_pred_student)).sum(1).mean() * temperature**2


def _mdistiller_at(f_s, f_t, p=2):
    """single_stage_at_loss: the larger map average-pooled to the smaller one, then
    (normalize(mean_c f^p) - normalize(mean_c f^p))^2 averaged."""
    def pool(f, size):
        k = f.shape[1] // size
        return f.reshape(f.shape[0], size, k, size, k, f.shape[3]).mean(axis=(2, 4))

    if f_s.shape[1] > f_t.shape[1]:
        f_s = pool(f_s, f_t.shape[1])
    elif f_s.shape[1] < f_t.shape[1]:
        f_t = pool(f_t, f_s.shape[1])

    def at(f):
        a = (f**p).mean(-1).reshape(len(f), -1)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    return ((at(f_s) - at(f_t)) ** 2).mean()


def _mdistiller_rkd(f_s, f_t, distance_weight=25.0, angle_weight=50.0):
    """rkd_loss: pdist / mean of the positive distances, smooth_l1; angles at each vertex."""
    def pdist(e):
        d = np.sqrt(np.clip((e**2).sum(1)[:, None] + (e**2).sum(1)[None] - 2 * e @ e.T, 1e-12, None))
        np.fill_diagonal(d, 0.0)
        return d / d[d > 0].mean()

    def angle(e):
        diff = e[None] - e[:, None]
        diff = diff / np.maximum(np.linalg.norm(diff, axis=2, keepdims=True), 1e-12)
        return np.einsum("ijd,ikd->ijk", diff, diff).reshape(-1)

    def smooth_l1(a, b):
        d = np.abs(a - b)
        return np.where(d < 1, 0.5 * d**2, d - 0.5).mean()

    return distance_weight * smooth_l1(pdist(f_s), pdist(f_t)) + angle_weight * smooth_l1(angle(f_s), angle(f_t))


def test_each_loss_matches_its_reference_implementation_on_fixed_inputs():
    rng = np.random.default_rng(7)
    t_logits, s_logits = rng.normal(0, 3, (6, 5)).astype("float32"), rng.normal(0, 3, (6, 5)).astype("float32")
    for temperature in (1.0, 4.0):
        assert _np(ResponseDistillation(temperature).compute_loss(t_logits, s_logits)) == pytest.approx(
            _mdistiller_kd(s_logits.astype(np.float64), t_logits.astype(np.float64), temperature), rel=1e-4)
    # FitNets: F.mse_loss(conv_reg(f_s), f_t), the regressor a 1x1 convolution (set here)
    f_s, f_t = rng.normal(size=(4, 4, 4, 3)).astype("float32"), rng.normal(size=(4, 4, 4, 5)).astype("float32")
    kernel, bias = rng.normal(size=(3, 5)).astype("float32"), rng.normal(size=5).astype("float32")
    hint = FitNetsDistillation("a", "b")
    hint.compute_loss(f_t, f_s)  # builds the adapter from the shapes
    hint.adapters[0].set_weights([kernel[None, None], bias])
    assert _np(hint.compute_loss(f_t, f_s)) == pytest.approx(((f_s @ kernel + bias - f_t) ** 2).mean(), rel=1e-4)
    # Attention transfer, over two stages (the teacher's maps larger: both pool them alike)
    stages = [(rng.normal(size=(4, 4, 4, 3)), rng.normal(size=(4, 8, 8, 6))),
              (rng.normal(size=(4, 2, 2, 8)), rng.normal(size=(4, 2, 2, 4)))]
    stages = [(s.astype("float32"), t.astype("float32")) for s, t in stages]
    at = AttentionTransfer(["s1", "s2"], ["t1", "t2"])
    terms = at.compute_terms([{"t1": stages[0][1], "t2": stages[1][1]}], {"s1": stages[0][0], "s2": stages[1][0]})
    assert _np(terms["loss_attention"]) == pytest.approx(sum(_mdistiller_at(s, t) for s, t in stages), rel=1e-4)
    # RKD on pooled features (mdistiller's pooled_feat)
    e_s, e_t = rng.normal(size=(6, 4, 4, 8)).astype("float32"), rng.normal(size=(6, 2, 2, 16)).astype("float32")
    expected = _mdistiller_rkd(e_s.mean(axis=(1, 2)).astype(np.float64), e_t.mean(axis=(1, 2)).astype(np.float64))
    assert _np(RelationalDistillation("s", "t").compute_loss(e_t, e_s)) == pytest.approx(expected, rel=1e-3)
    # CA-MKD: weight = (1 - softmax over teachers of each one's CE on the label) / (K - 1)
    logits = [rng.normal(0, 2, (5, 4)).astype("float32") for _ in range(3)]
    labels = rng.integers(0, 4, 5)
    ce = np.stack([-_log_softmax(z.astype(np.float64))[np.arange(5), labels] for z in logits])  # [K, B]
    reference = (1.0 - np.exp(ce) / np.exp(ce).sum(0)) / 2
    np.testing.assert_allclose(keras.ops.convert_to_numpy(confidence_weights(logits, labels)), reference.T, rtol=1e-5)


def test_fusion_terms_match_their_formulas_with_known_weights():
    """fusion="mean", one teacher, identity projection and adapter, no centring: each term as
    the module docstring writes it."""
    rng = np.random.default_rng(8)
    b, c, k = 6, 4, 3
    s_map, t_map = rng.normal(size=(b, 2, 2, c)).astype("float32"), rng.normal(size=(b, 4, 4, c)).astype("float32")
    s_logits, t_logits = rng.normal(size=(b, k)).astype("float32"), rng.normal(size=(b, k)).astype("float32")
    labels = rng.integers(0, k, b)
    loss = FusionDistillation("mean", "s", "t", width=c, num_heads=1, temperature=2.0, centre=False)
    loss.build_for({"s": (None, 2, 2, c)}, [{"t": (None, 4, 4, c)}], num_classes=k)
    eye = np.eye(c, dtype="float32")[None, None]
    loss.adapter.set_weights([eye, np.zeros(c, "float32")])
    loss.teacher_fusion.projections[0].set_weights([eye, np.zeros(c, "float32")])
    head_w, head_b = rng.normal(size=(c, k)).astype("float32"), rng.normal(size=k).astype("float32")
    loss.head.set_weights([head_w, head_b])
    terms = loss.compute_terms([{"t": t_map, "logits": t_logits}], {"s": s_map, "logits": s_logits}, labels=labels)
    fused = t_map.reshape(b, 2, 2, 2, 2, c).mean(axis=(2, 4)).astype(np.float64)  # pooled to the student's grid
    unit = lambda x: x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-6)  # noqa: E731
    relation = (((unit(s_map) - unit(fused)) ** 2).sum(-1)).mean()
    assert _np(terms["loss_relation"]) == pytest.approx(relation, rel=1e-4)
    rkd = _mdistiller_rkd(s_map.mean(axis=(1, 2)).astype(np.float64), fused.mean(axis=(1, 2)))
    assert _np(terms["loss_relation_rkd"]) == pytest.approx(rkd, rel=1e-3)
    kd = _mdistiller_kd(s_logits.astype(np.float64), t_logits.astype(np.float64), 2.0)
    assert _np(terms["loss_relation_kd"]) == pytest.approx(kd, rel=1e-4)
    head = fused.mean(axis=(1, 2)) @ head_w + head_b
    assert _np(terms["loss_fusion_ce"]) == pytest.approx(-_log_softmax(head)[np.arange(b), labels].mean(), rel=1e-4)
    assert _np(terms["fusion_weight_0"]) == pytest.approx(1.0)
    total = sum(loss.loss_weights[n] * _np(terms[n]) for n in loss.loss_weights)
    teachers = [{"t": t_map, "logits": t_logits}]
    assert _np(loss.compute_loss(teachers, {"s": s_map, "logits": s_logits}, labels=labels)) == pytest.approx(total, rel=1e-5)

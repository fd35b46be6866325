"""Teacher-output cache: same pixels for teacher and student, consistent outputs, safe reuse."""

import keras
import numpy as np
import pytest

from keras_endokd.data.source import Split
from keras_endokd.distill.distiller import Distiller
from keras_endokd.distill.registry import build_losses
from keras_endokd.distill.teacher_cache import TeacherCache, cache_key
from keras_endokd.models.student import build_student
from keras_endokd.models.teachers import build_teacher

pytestmark = pytest.mark.xdist_group("test_teacher_cache")  # its module fixtures are built once, on one worker


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 3, 40), images=rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8))
    distiller = Distiller(student=build_student(3, 32), teacher=build_teacher("tiny_resnet", 3, 32),
                          distillation_losses=build_losses("response,relation", heads=2))
    distiller.compile("adam")
    return split, distiller


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cached_outputs_are_the_teachers_outputs_on_the_same_view(setup, mode, tmp_path):
    split, d = setup
    cache = TeacherCache.build(split, d.teacher_tap_models, 32, num_views=3, mode=mode, folder=str(tmp_path / "c"))
    assert cache.views.shape == (3, 40, 32, 32, 3) and cache.views.dtype == np.uint8
    assert (cache.folder is not None) == (mode == "disk")
    x, y = next(iter(cache.dataset(8, seed=0)))
    live = d.teacher_tap_models[0](x["image"], training=False)
    for tap in ("logits", "feat_3"):
        np.testing.assert_allclose(x["teachers"][0][tap].numpy(), live[tap].numpy(), atol=2e-2, rtol=1e-2)
    # every image appears once per epoch, with its own label
    labels = np.concatenate([b[1].numpy() for b in cache.dataset(8, seed=0)])
    assert sorted(labels.tolist()) == sorted(split.labels.tolist())
    # views differ from each other (augmentation) but each is one of the stored views
    assert not np.array_equal(cache.views[0], cache.views[1])


def test_disk_cache_is_reopened_not_rebuilt_and_partial_builds_are_discarded(setup, tmp_path):
    split, d = setup
    folder = str(tmp_path / "c")
    first = TeacherCache.build(split, d.teacher_tap_models, 32, num_views=2, mode="disk", folder=folder)
    first.views[0, 0, 0, 0, 0] ^= 1  # mark the stored file: a rebuild would overwrite it
    first.views.flush()
    marked = int(first.views[0, 0, 0, 0, 0])
    again = TeacherCache.build(split, d.teacher_tap_models, 32, num_views=2, mode="disk", folder=folder)
    assert int(again.views[0, 0, 0, 0, 0]) == marked
    (tmp_path / "c" / "complete.json").unlink()  # killed while running the teachers: the views stay
    rerun = TeacherCache.build(split, d.teacher_tap_models, 32, num_views=2, mode="disk", folder=folder)
    assert int(rerun.views[0, 0, 0, 0, 0]) == marked and (tmp_path / "c" / "complete.json").is_file()
    (tmp_path / "c" / "views_complete.json").unlink()  # killed while rendering: everything again
    rebuilt = TeacherCache.build(split, d.teacher_tap_models, 32, num_views=2, mode="disk", folder=folder)
    assert int(rebuilt.views[0, 0, 0, 0, 0]) != marked


def test_caches_of_the_same_views_share_them_on_disk(setup, tmp_path, monkeypatch):
    """A teacher cache renders the views into `views_folder`; the student alone's cache of the same
    views then opens them, and a cache of other teachers only runs its teachers on them."""
    from keras_endokd.distill import teacher_cache

    split, d = setup
    views = str(tmp_path / "views")
    built = TeacherCache.build(split, d.teacher_tap_models, 32, num_views=2, seed=3, mode="disk",
                               folder=str(tmp_path / "outputs"), views_folder=views)
    assert sorted(p.name for p in (tmp_path / "views").iterdir()) == ["views.npy", "views_complete.json"]
    monkeypatch.setattr(teacher_cache, "augment_image", lambda *a: pytest.fail("rendered the views again"))
    alone = TeacherCache.build(split, [], 32, num_views=2, seed=3, mode="disk", folder=views)
    np.testing.assert_array_equal(alone.views, built.views)
    assert alone.stream_fingerprint(3) == built.stream_fingerprint(3)
    other = build_teacher("tiny_resnet", 3, 32)
    graphs = Distiller(student=build_student(3, 32), teacher=other,
                       distillation_losses=build_losses("response", heads=2)).teacher_tap_models
    rerun = TeacherCache.build(split, graphs, 32, num_views=2, seed=3, mode="disk",
                               folder=str(tmp_path / "other"), views_folder=views)
    live = graphs[0](np.asarray(built.views[1, :8], np.float32), training=False)["logits"]
    np.testing.assert_allclose(np.asarray(rerun.outputs["0/logits"][1, :8], np.float32), live, atol=2e-2, rtol=1e-2)


def test_cache_key_changes_with_teachers_data_and_settings(setup):
    _, d = setup
    base = cache_key(d.teachers, "data", ["logits"], image_size=32)
    assert base == cache_key(d.teachers, "data", ["logits"], image_size=32)
    assert base != cache_key(d.teachers, "other", ["logits"], image_size=32)
    assert base != cache_key(d.teachers, "data", ["logits", "feat_3"], image_size=32)
    assert base != cache_key(d.teachers, "data", ["logits"], image_size=64)
    other = build_teacher("tiny_resnet", 3, 32)
    assert base != cache_key([other], "data", ["logits"], image_size=32)


def test_distillation_trains_from_the_cache(setup):
    split, d = setup
    cache = TeacherCache.build(split, d.teacher_tap_models, 32, num_views=2, mode="memory")
    history = d.fit(cache.dataset(8), epochs=3, verbose=0).history
    assert "loss_response" in history and history["loss"][-1] < history["loss"][0]


def test_student_alone_and_distilled_arms_train_on_identical_batches(setup):
    """The fair protocol: a cache of views alone (the student-alone arm) and a cache with
    teacher outputs give the same images, labels and order, epoch after epoch, for one seed."""
    split, d = setup
    keras.utils.set_random_seed(5)  # as run.training_inputs does before each build
    with_teachers = TeacherCache.build(split, d.teacher_tap_models, 32, num_views=3, seed=5)
    keras.utils.set_random_seed(5)
    views_only = TeacherCache.build(split, [], 32, num_views=3, seed=5)
    assert views_only.outputs == {} and np.array_equal(views_only.views, with_teachers.views)
    distilled, alone = with_teachers.dataset(8, seed=5), views_only.dataset(8, seed=5)
    epochs = []
    for _ in range(2):
        a = [(x["image"].numpy(), y.numpy()) for x, y in distilled]
        b = [(x.numpy(), y.numpy()) for x, y in alone]
        assert len(a) == len(b) == 5
        for (xa, ya), (xb, yb) in zip(a, b):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
        epochs.append(np.concatenate([x for x, _ in a]))
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled and redrawn each epoch
    assert with_teachers.stream_fingerprint(5) == views_only.stream_fingerprint(5)
    assert views_only.stream_fingerprint(5) != views_only.stream_fingerprint(6)
    other_seed = [x.numpy() for x, _ in views_only.dataset(8, seed=6)]
    assert not np.array_equal(np.concatenate(other_seed), epochs[0])

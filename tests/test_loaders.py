"""Kvasir-v2 and generic-folder loaders on tiny generated trees."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from keras_endokd.data import files, folder, kvasir
from keras_endokd.data.source import DatasetLayoutError


def _image_bytes(fmt="JPEG"):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 80, 60)).save(buffer, fmt)
    return buffer.getvalue()


JPEG, PNG = _image_bytes("JPEG"), _image_bytes("PNG")


def _make_tree(root, class_sizes, data=JPEG, ext=".jpg"):
    for class_name, n in class_sizes.items():
        (root / class_name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / class_name / f"img_{i:02d}{ext}").write_bytes(data)


@pytest.fixture
def kvasir_parent(tmp_path):
    sizes = {c: 5 + i % 3 for i, c in enumerate(kvasir.CLASS_NAMES)}
    _make_tree(tmp_path / "kvasir-dataset-v2", sizes)
    return tmp_path


def _all_paths(source):
    return [p for s in source.splits.values() for p in s.paths]


def test_kvasir_parses_both_folder_forms(kvasir_parent):
    a = kvasir.load(kvasir_parent)
    b = kvasir.load(kvasir_parent / "kvasir-dataset-v2")
    assert a.name == "kvasir_v2" and a.class_names == kvasir.CLASS_NAMES
    assert a.root == b.root == str(kvasir_parent / "kvasir-dataset-v2")
    assert all(os.path.isabs(p) for p in _all_paths(a))
    for split in ("train", "val", "test"):
        assert a.splits[split].paths == b.splits[split].paths
    for c, name in enumerate(a.class_names):  # labels follow the folders
        for split in a.splits.values():
            assert all(f"/{name}/" in p for p, y in zip(split.paths, split.labels) if y == c)


def test_kvasir_folds_are_disjoint_cover_everything_and_repeat(kvasir_parent):
    total = sum(5 + i % 3 for i in range(8))
    tests = []
    for fold in (0, 1):
        source = kvasir.load(kvasir_parent, fold=fold)
        paths = _all_paths(source)
        assert len(paths) == len(set(paths)) == total  # train/val/test disjoint, nothing lost
        assert len(source.splits["val"]) >= 8  # >= 1 per class
        tests.append(set(source.splits["test"].paths))
        again = kvasir.load(kvasir_parent, fold=fold)
        assert again.splits["train"].paths == source.splits["train"].paths
        np.testing.assert_array_equal(again.splits["val"].labels, source.splits["val"].labels)
    assert not tests[0] & tests[1] and len(tests[0] | tests[1]) == total


def test_kvasir_ratio_split(kvasir_parent):
    source = kvasir.load(kvasir_parent, split="ratio", fractions=(0.6, 0.2, 0.2))
    assert sum(len(s) for s in source.splits.values()) == sum(5 + i % 3 for i in range(8))
    assert set(source.splits["test"].labels) == set(range(8))


def test_kvasir_missing_or_extra_class_folder_is_named(kvasir_parent):
    root = kvasir_parent / "kvasir-dataset-v2"
    (root / "extra-class").mkdir()
    with pytest.raises(DatasetLayoutError, match="extra-class"):
        kvasir.load(kvasir_parent)
    (root / "extra-class").rmdir()
    for f in (root / "polyps").iterdir():
        f.unlink()
    (root / "polyps").rmdir()
    with pytest.raises(DatasetLayoutError) as error:
        kvasir.load(kvasir_parent)
    assert str(root / "polyps") in str(error.value) and "ulcerative-colitis" in str(error.value)


def test_kvasir_reports_skipped_files_and_empty_classes(kvasir_parent):
    root = kvasir_parent / "kvasir-dataset-v2"
    (root / "polyps" / "broken.jpg").write_bytes(b"")
    (root / "polyps" / "notes.txt").write_text("not an image")
    (root / "polyps" / ".hidden.jpg").write_bytes(JPEG)
    (root / "stray.jpg").write_bytes(JPEG)
    for f in (root / "esophagitis").iterdir():
        f.unlink()
    source = kvasir.load(kvasir_parent)
    reasons = {os.path.basename(p): r for p, r in source.skipped}
    assert reasons["broken.jpg"].startswith("empty file")
    assert reasons["notes.txt"].startswith("not an image")
    assert reasons[".hidden.jpg"] == "hidden file"
    assert "outside any class folder" in reasons["stray.jpg"]
    assert reasons["esophagitis"] == "empty class folder"
    assert source.num_classes == 8
    used = {os.path.basename(p) for p in _all_paths(source)}
    assert not used & {"broken.jpg", "notes.txt", ".hidden.jpg", "stray.jpg"}


def test_folder_loader_with_three_classes(tmp_path):
    _make_tree(tmp_path, {"alpha": 10, "beta": 10})
    _make_tree(tmp_path, {"gamma": 10}, data=PNG, ext=".PNG")  # extension case does not matter
    source = folder.load(tmp_path, seed=3)
    assert source.name == "folder" and source.class_names == ("alpha", "beta", "gamma")
    assert [len(source.splits[s]) for s in ("train", "val", "test")] == [21, 3, 6]
    assert source.skipped == ()
    kfold = folder.load(tmp_path, split="kfold", fold=1)
    assert len(kfold.splits["test"]) == 15


def test_folder_loader_errors(tmp_path):
    (tmp_path / "loose.jpg").write_bytes(JPEG)
    with pytest.raises(DatasetLayoutError, match=r"no class folders; expected .*/<class>/<image>"):
        folder.load(tmp_path)
    _make_tree(tmp_path, {"only": 3})
    with pytest.raises(DatasetLayoutError, match="only 1 class folder"):
        folder.load(tmp_path)
    with pytest.raises(DatasetLayoutError, match="no such folder"):
        folder.load(tmp_path / "nowhere")


def test_safe_join_refuses_paths_outside_the_root(tmp_path):
    (tmp_path / "root").mkdir()
    expected = os.path.realpath(tmp_path / "root" / "a" / "b.jpg")
    assert files.safe_join(tmp_path / "root", "a/b.jpg") == expected
    for bad in ("../x.jpg", "a/../../x.jpg", str(tmp_path / "x.jpg")):
        with pytest.raises(DatasetLayoutError, match="outside the dataset root"):
            files.safe_join(tmp_path / "root", bad)
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(DatasetLayoutError):
        files.safe_join(tmp_path / "root", "link/x.jpg")

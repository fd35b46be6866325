"""Bad data a clinic may have: every case is reported, odd formats are used, nothing crashes later.

Trees are generated with PIL in tmp_path: a generic folder dataset, a Kvasir-v2 layout and a tiny
Hyper-Kvasir tree with its split file. The one large image is a real 8000x6000 JPEG.
"""

import io
import os
import pickle
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_endokd.data import BadImageError, DatasetLayoutError, checks, folder, kvasir, load_dataset
from keras_endokd.data.tf_datasets import decode_image, make_dataset

pytestmark = pytest.mark.xdist_group("test_bad_data")  # its module fixtures are built once, on one worker

RED, GREEN, BLUE = (200, 40, 30), (30, 180, 60), (0, 0, 255)
CMYK = (200, 50, 10, 30)
# Adobe CMYK -> RGB: channel = (255 - C) * (255 - K) / 255.
CMYK_AS_RGB = tuple((255 - c) * (255 - CMYK[3]) / 255 for c in CMYK[:3])


def _encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _jpeg(colour=RED, size=(16, 16)):
    return _encode(Image.new("RGB", size, colour), "JPEG", quality=95)


def _palette_png():
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 0, *GREEN] + [0] * 762)
    return _encode(image, "PNG")


def _noisy_png():
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return _encode(Image.fromarray(pixels), "PNG")


# Readable odd formats: file name -> (bytes, expected RGB of every pixel, tolerance).
ODD_FORMATS = {
    "gray.png": (_encode(Image.new("L", (16, 16), 77), "PNG"), (77, 77, 77), 0),
    "rgba.png": (_encode(Image.new("RGBA", (16, 16), (10, 200, 30, 100)), "PNG"), (10, 200, 30), 0),
    "palette.png": (_palette_png(), GREEN, 0),
    "sixteen.png": (_encode(Image.fromarray(np.full((16, 16), 40000, np.uint16)), "PNG"),
                    (40000 >> 8,) * 3, 0),
    "cmyk.jpg": (_encode(Image.new("CMYK", (16, 16), CMYK), "JPEG", quality=95), CMYK_AS_RGB, 3),
    "png-named.jpg": (_encode(Image.new("RGB", (16, 16), GREEN), "PNG"), GREEN, 0),
    "image.gif": (_encode(Image.new("RGB", (16, 16), BLUE).convert("P"), "GIF"), BLUE, 0),
    "image.webp": (_encode(Image.new("RGB", (16, 16), GREEN), "WEBP", lossless=True), GREEN, 0),
}
# Unreadable files: file name -> (bytes, start of the reason).
UNREADABLE = {
    "truncated.jpg": (_jpeg(size=(64, 64))[:300], "unreadable image (truncated or corrupt JPEG: "),
    "truncated.png": (_noisy_png()[:300], "unreadable image (truncated or corrupt PNG: "),
    "text.jpg": (b"this is a report, not a picture\n" * 4,
                 "unreadable image (not a JPEG, PNG, GIF, BMP or WebP file: Unknown image file"),
    "scan.tif": (_encode(Image.new("RGB", (16, 16), RED), "TIFF"),
                 "unreadable image (TIFF, which TensorFlow cannot decode"),
}
BIG = (8000, 6000)  # width, height


def _reasons(source):
    return {os.path.basename(path): reason for path, reason in source.skipped}


def _used(source):
    return {os.path.basename(p) for s in source.splits.values() for p in s.paths}


@pytest.fixture(scope="module")
def folder_tree(tmp_path_factory):
    """<root>/{alpha,beta,gamma}: every bad case, every odd format and one 8000x6000 JPEG."""
    root = tmp_path_factory.mktemp("clinic")
    for name in ("alpha", "beta", "gamma"):
        (root / name).mkdir()
    for i in range(6):
        (root / "alpha" / f"red_{i}.jpg").write_bytes(_jpeg(RED))
    for i in range(10):  # with the 4 unreadable ones, every split keeps a good image
        (root / "beta" / f"green_{i}.jpg").write_bytes(_jpeg(GREEN))
    for name, (data, _, _) in ODD_FORMATS.items():
        (root / "alpha" / name).write_bytes(data)
    for name, (data, _) in UNREADABLE.items():
        (root / "beta" / name).write_bytes(data)
    (root / "beta" / "zero.jpg").write_bytes(b"")
    (root / "beta" / "notes.txt").write_text("not an image")
    (root / "beta" / ".hidden.jpg").write_bytes(_jpeg())
    (root / "stray.jpg").write_bytes(_jpeg())
    Image.new("RGB", BIG, RED).save(root / "alpha" / "big.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def folder_source(folder_tree):
    return load_dataset("folder", data_dir=str(folder_tree))


def test_every_bad_case_is_skipped_with_its_reason(folder_source, folder_tree):
    reasons = _reasons(folder_source)
    for name, (_, reason) in UNREADABLE.items():
        assert reasons[name].startswith(reason), (name, reasons[name])
    assert reasons["truncated.jpg"].endswith("Invalid JPEG data or crop window.)")  # TF's message
    assert reasons["zero.jpg"] == "empty file (0 bytes)"
    assert reasons["notes.txt"].startswith("not an image (extension '.txt'")
    assert reasons[".hidden.jpg"] == "hidden file"
    assert "outside any class folder" in reasons["stray.jpg"]
    assert reasons["gamma"] == "empty class folder"
    assert folder_source.class_names == ("alpha", "beta")  # the empty folder is not a class
    assert not _used(folder_source) & set(reasons)
    expected_used = {f"red_{i}.jpg" for i in range(6)} | {f"green_{i}.jpg" for i in range(10)}
    assert _used(folder_source) == expected_used | set(ODD_FORMATS) | {"big.jpg"}
    described = folder_source.describe()
    assert described["skipped_count"] == len(described["skipped"]) == 9
    assert described["bad_image_count"] == len(UNREADABLE) + 1  # + the 0-byte file
    # The loader alone (no check) keeps the unreadable files; the check removed them.
    assert set(UNREADABLE) <= _used(folder.load(folder_tree))


def test_odd_formats_decode_to_uint8_rgb_of_the_right_colour(folder_tree):
    for name, (_, colour, tolerance) in ODD_FORMATS.items():
        image = decode_image(tf.io.read_file(str(folder_tree / "alpha" / name)))
        assert image.dtype == tf.uint8 and tuple(image.shape) == (16, 16, 3), name
        error = np.abs(image.numpy().astype(float) - np.array(colour)).max()
        assert error <= tolerance + 0.5, (name, image.numpy()[0, 0], colour)
    big = decode_image(tf.io.read_file(str(folder_tree / "alpha" / "big.jpg")))
    assert tuple(big.shape) == (BIG[1], BIG[0], 3) and big.dtype == tf.uint8
    np.testing.assert_allclose(big.numpy()[::500, ::500].reshape(-1, 3).mean(0), RED, atol=2)


def test_cleaned_splits_iterate_to_the_end(folder_source, folder_tree):
    for name, split in folder_source.splits.items():
        labels = [y.numpy() for _, y in make_dataset(split, 16, batch_size=8, cache=False)]
        assert sum(len(y) for y in labels) == len(split), name
    # Without the check, the first unreadable file stops the pipeline.
    unchecked = folder.load(folder_tree)
    split = next(s for s in unchecked.splits.values()
                 if any(os.path.basename(p) in UNREADABLE for p in s.paths))
    bad_only = split.subset([i for i, p in enumerate(split.paths) if "big" not in p])
    with pytest.raises(tf.errors.InvalidArgumentError):
        for _ in make_dataset(bad_only, 16, batch_size=8, cache=False):
            pass


@pytest.fixture
def kvasir_tree(tmp_path):
    """A Kvasir-v2 layout with a corrupt and an empty JPEG, a stray file, an empty class."""
    root = tmp_path / "kvasir-dataset-v2"
    for c in kvasir.CLASS_NAMES[1:]:
        (root / c).mkdir(parents=True)
        for i in range(4):
            (root / c / f"{i}.jpg").write_bytes(_jpeg())
    (root / kvasir.CLASS_NAMES[0]).mkdir()
    (root / "polyps" / "corrupt.jpg").write_bytes(_jpeg(size=(64, 64))[:300])
    (root / "polyps" / "zero.jpg").write_bytes(b"")
    (root / "polyps" / "readme.txt").write_text("x")
    (root / "stray.png").write_bytes(ODD_FORMATS["gray.png"][0])
    return tmp_path


def test_kvasir_layout_skips_and_reports(kvasir_tree):
    # Kvasir-v2's 8 classes are fixed: the empty one stops load_dataset, naming class and splits.
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("kvasir_v2", data_dir=str(kvasir_tree))
    message = str(error.value)
    for split in ("train", "val", "test"):
        assert f"class {kvasir.CLASS_NAMES[0]!r} has no image in the {split} split (0 image(s)" in message
    assert "'polyps'" not in message
    source = checks.check_images(kvasir.load(kvasir_tree))
    reasons = _reasons(source)
    assert reasons["corrupt.jpg"].startswith("unreadable image (truncated or corrupt JPEG")
    assert reasons["zero.jpg"].startswith("empty file")
    assert reasons["readme.txt"].startswith("not an image")
    assert "outside any class folder" in reasons["stray.png"]
    assert reasons[kvasir.CLASS_NAMES[0]] == "empty class folder"
    assert sum(len(s) for s in source.splits.values()) == 7 * 4


def test_on_bad_image_error_names_the_bad_files(kvasir_tree):
    with pytest.raises(BadImageError) as error:
        load_dataset("kvasir_v2", data_dir=str(kvasir_tree), on_bad_image="error")
    message = str(error.value)
    assert "2 bad image file(s)" in message and "--on_bad_image=skip" in message
    assert str(kvasir_tree / "kvasir-dataset-v2" / "polyps" / "corrupt.jpg") in message
    assert sorted(os.path.basename(p) for p, _ in error.value.bad) == ["corrupt.jpg", "zero.jpg"]
    assert "readme.txt" not in message and "stray.png" not in message  # only reported, not bad
    with pytest.raises(ValueError, match=r"--on_bad_image='ignore': expected one of skip, error"):
        load_dataset("kvasir_v2", data_dir=str(kvasir_tree), on_bad_image="ignore")


def test_bad_image_error_lists_ten_and_counts_the_rest():
    error = BadImageError([(f"/data/{i}.jpg", "unreadable image (x)") for i in range(12)], "/data")
    message = str(error)
    assert message.startswith("12 bad image file(s) in /data")
    assert "/data/9.jpg" in message and "/data/10.jpg" not in message and "and 2 more" in message
    assert isinstance(error, DatasetLayoutError)
    assert str(pickle.loads(pickle.dumps(error))) == message


def test_layout_errors_name_the_path(tmp_path):
    (tmp_path / "loose.jpg").write_bytes(_jpeg())
    where = re.escape(str(tmp_path))
    with pytest.raises(DatasetLayoutError, match=rf"{where}: no class folders; expected "):
        load_dataset("folder", data_dir=str(tmp_path))
    for name in ("a", "b"):  # class folders whose every image is unreadable
        (tmp_path / name).mkdir()
        (tmp_path / name / "scan.tif").write_bytes(UNREADABLE["scan.tif"][0])
    with pytest.raises(DatasetLayoutError, match=rf"{where}: none of the 2 images decode"):
        load_dataset("folder", data_dir=str(tmp_path))


HEADER = "file-name;class-name;split-index"


@pytest.fixture
def hyper_tree(tmp_path):
    """labeled-images/lower-gi-tract/x/{polyps,cecum}: 60 tiny JPEGs each, and a corrupt one.

    The split file gets one row per file: 121 rows, so one missing row stays under the 1% that
    means "the wrong folder".
    """
    root = tmp_path / "labeled-images"
    tiny = _jpeg(size=(4, 4))
    rows = []
    for finding in ("polyps", "cecum"):
        folder_path = root / "lower-gi-tract" / "x" / finding
        folder_path.mkdir(parents=True)
        for i in range(60):
            (folder_path / f"{finding}-{i}.jpg").write_bytes(tiny)
            rows.append(f"{finding}-{i}.jpg;{finding};{i % 2}")
    (root / "lower-gi-tract" / "x" / "polyps" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff" * 9)
    rows.append("corrupt.jpg;polyp;0")
    return tmp_path, rows


def _split_file(tmp_path, rows, header=HEADER):
    path = tmp_path / "split.csv"
    path.write_text("\n".join([header] + rows) + "\n")
    return str(path)


def test_split_file_missing_files_unknown_classes_and_corrupt_images(hyper_tree):
    tmp_path, rows = hyper_tree
    rows = rows + ["ghost.jpg;no-such-class;1"]
    rows[0] = rows[0].replace(";polyps;", ";no-such-class;")  # class spelling is not used
    path = _split_file(tmp_path, rows)
    source = load_dataset("hyper_kvasir", data_dir=str(tmp_path), split_file=path)
    reasons = _reasons(source)
    assert reasons["ghost.jpg"].startswith(f"listed in {path} line {len(rows) + 1} but not found")
    assert reasons["corrupt.jpg"].startswith("unreadable image (truncated or corrupt JPEG")
    labels = {os.path.basename(p): source.class_names[y]
              for s in source.splits.values() for p, y in zip(s.paths, s.labels)}
    assert len(labels) == 120 and labels["polyps-0.jpg"] == "polyps"  # from its folder
    with pytest.raises(BadImageError) as error:
        load_dataset("hyper_kvasir", data_dir=str(tmp_path), split_file=path, on_bad_image="error")
    assert sorted(os.path.basename(p) for p, _ in error.value.bad) == ["corrupt.jpg", "ghost.jpg"]


@pytest.mark.parametrize("escape", ["../outside.jpg", "lower-gi-tract/../../outside.jpg", "ABS"])
def test_split_file_paths_cannot_leave_the_root(hyper_tree, escape):
    tmp_path, rows = hyper_tree
    (tmp_path / "outside.jpg").write_bytes(_jpeg())
    escape = str(tmp_path / "outside.jpg") if escape == "ABS" else escape
    path = _split_file(tmp_path, rows + [f"{escape};polyps;0"])
    message = rf"{re.escape(path)} line {len(rows) + 2}: .*points outside the dataset root"
    with pytest.raises(DatasetLayoutError, match=message):
        load_dataset("hyper_kvasir", data_dir=str(tmp_path), split_file=path)


def test_split_file_with_a_wrong_header_names_file_and_columns(hyper_tree):
    tmp_path, rows = hyper_tree
    path = _split_file(tmp_path, rows, header="image,label,fold")
    message = re.escape(f"{path} line 1: header 'image,label,fold', expected '{HEADER}'")
    with pytest.raises(DatasetLayoutError, match=message):
        load_dataset("hyper_kvasir", data_dir=str(tmp_path), split_file=path)


def test_empty_class_folder_is_dropped_with_a_warning(tmp_path, caplog):
    for name, n in {"a": 5, "b": 5, "empty": 0}.items():
        (tmp_path / name).mkdir()
        for i in range(n):
            (tmp_path / name / f"{i}.jpg").write_bytes(_jpeg())
    with caplog.at_level("WARNING"):
        source = folder.load(tmp_path)
    assert source.class_names == ("a", "b") and source.num_classes == 2
    assert "dropped 1 class folder(s) without images (not a class): empty" in caplog.text


def test_a_class_missing_from_a_split_stops_before_training(tmp_path):
    # 2 images: the 70/10/20 split gives the class a train and a test image, but no val image.
    for name, n in {"many": 10, "rare": 2}.items():
        (tmp_path / name).mkdir()
        for i in range(n):
            (tmp_path / name / f"{i}.jpg").write_bytes(_jpeg())
    source = folder.load(tmp_path)
    assert source.empty_classes() and all(name == "rare" for _, name, _ in source.empty_classes())
    with pytest.raises(DatasetLayoutError) as error:
        load_dataset("folder", data_dir=str(tmp_path))
    message = str(error.value)
    assert "class 'rare' has no image in the" in message and "(2 image(s) in all splits)" in message
    assert "'many'" not in message and "remove their folders" in message

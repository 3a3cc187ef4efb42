"""Data layer: ImageFolder dirs and archives, prepared arrays, and the errors for bad input."""
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_archive, make_image_folder
from immiscible.data import (DatasetError, load_dataset, load_prepared, main, prepare_dataset, read_image_folder,
                             to_model_range, to_uint8)


def test_directory_and_archive_give_the_same_arrays(image_folder, tmp_path):
    a = read_image_folder(image_folder)
    b = read_image_folder(make_archive(image_folder, tmp_path / "x.tar.gz", wrap="wrapped"))
    assert set(a) == {"train", "test"}
    for split in a:
        assert np.array_equal(a[split].images, b[split].images)
        assert np.array_equal(a[split].labels, b[split].labels)
    assert a["train"].classes == ["cat", "dog"]
    assert a["train"].images.shape == (12, 8, 8, 3) and a["train"].images.dtype == np.uint8
    assert a["train"].shape == (3, 8, 8)


def test_pixels_survive_the_round_trip(tmp_path):
    folder = make_image_folder(tmp_path / "f", classes=("a",), per_class=1, splits=("train",))
    png = np.asarray(Image.open(folder / "train" / "a" / "0000.png"))
    ds = read_image_folder(folder)["train"]
    assert np.array_equal(ds.images[0], png)
    x = ds.tensor()
    assert x.shape == (1, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8(x), ds.images)


def test_grayscale_and_other_resolutions_and_class_counts(tmp_path):
    folder = make_image_folder(tmp_path / "g", classes=("0", "1", "2"), per_class=2, size=(12, 10), mode="L",
                               splits=("train",))
    ds = read_image_folder(folder)["train"]
    assert ds.images.shape == (6, 10, 12, 1) and ds.classes == ["0", "1", "2"]
    assert sorted(set(ds.labels.tolist())) == [0, 1, 2]


def test_prepare_then_load_by_name(image_archive, tmp_path):
    out = tmp_path / "data" / "tiny"
    info = prepare_dataset(str(image_archive), out)
    assert info["splits"] == {"train": 16, "test": 16}
    assert json.loads((out / "info.json").read_text())["classes"] == ["cat", "dog"]
    ds = load_dataset("tiny", "train", data_dir=tmp_path / "data")
    assert np.array_equal(ds.images, load_prepared(out).images)
    assert not list(out.glob("*.tmp*"))  # atomic writes leave no temp files


def test_load_dataset_by_path_reads_directly(image_archive):
    assert len(load_dataset(str(image_archive), "test")) == 16


def test_cifar10_cli_uses_the_archive_from_the_environment(tmp_path, monkeypatch):
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    folder = make_image_folder(tmp_path / "c", classes=classes, per_class=1, size=(32, 32))
    monkeypatch.setenv("CIFAR10_ARCHIVE", str(make_archive(folder, tmp_path / "c.tar.gz")))
    main(["--dataset", "cifar10", "--out", str(tmp_path / "out")])
    ds = load_prepared(tmp_path / "out", "test")
    assert ds.images.shape == (10, 32, 32, 3) and ds.classes == list(classes)


def test_cifar10_archive_with_wrong_classes_is_refused(image_archive, tmp_path):
    with pytest.raises(DatasetError, match="does not look like CIFAR-10"):
        prepare_dataset("cifar10", tmp_path / "o", archive=str(image_archive))


# ---- bad input stops early with what to do

def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_image_folder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="unknown dataset"):
        load_dataset("imagenet-nothere", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="make data"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_truncated_archive(image_archive, tmp_path):
    data = image_archive.read_bytes()
    bad = tmp_path / "truncated.tar.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        read_image_folder(bad)


def test_garbage_archive(tmp_path):
    bad = tmp_path / "garbage.tar.gz"
    bad.write_bytes(os.urandom(1000))
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        read_image_folder(bad)


def test_empty_archive_and_folder_without_images(tmp_path):
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(DatasetError, match="no images under train/"):
        read_image_folder(empty)
    (tmp_path / "d" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "d" / "train" / "cat" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images under train/"):
        read_image_folder(tmp_path / "d")


def test_archive_without_train_split(tmp_path):
    folder = make_image_folder(tmp_path / "f", splits=("val",))
    with pytest.raises(DatasetError, match="train/"):
        read_image_folder(make_archive(folder, tmp_path / "v.tar.gz"))


def test_mixed_sizes_name_an_offending_file(tmp_path):
    folder = make_image_folder(tmp_path / "m", per_class=3, splits=("train",))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "train" / "dog" / "odd.png")
    with pytest.raises(DatasetError, match=r"mixed sizes.*odd\.png is 16x16"):
        read_image_folder(folder)


def test_undecodable_image_is_named(tmp_path):
    folder = make_image_folder(tmp_path / "u", per_class=2, splits=("train",))
    (folder / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        read_image_folder(folder)


def test_plain_file_that_is_not_an_archive(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("a,b")
    with pytest.raises(DatasetError, match="not an archive"):
        read_image_folder(f)


def test_to_model_range_scales_to_minus_one_one():
    x = to_model_range(np.array([[[[0, 255, 128]]]], dtype=np.uint8))
    assert torch.allclose(x.flatten(), torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]), atol=1e-6)


def test_preparing_one_archive_at_two_paths_gives_the_same_bytes(image_archive, tmp_path):
    """Prepared data names its archive by file name and SHA-256, never by machine path, so DVC sees the same output
    wherever the archive lies (a fresh clone with the same archive reruns nothing after the data stage)."""
    import hashlib
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    copy = Path(shutil.copy(image_archive, elsewhere / image_archive.name))
    outs = []
    for i, archive in enumerate((image_archive, copy)):
        out = tmp_path / f"out{i}" / "tiny"
        subprocess.run([sys.executable, "-m", "immiscible.data", "--dataset", str(archive), "--out", str(out)],
                       check=True, capture_output=True)
        outs.append(out)
    for name in ("train.npz", "test.npz", "info.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    info = json.loads((outs[0] / "info.json").read_text())
    assert info["source"] == image_archive.name and str(tmp_path) not in (outs[0] / "info.json").read_text()
    assert info["sha256"] == hashlib.sha256(image_archive.read_bytes()).hexdigest()

"""FID of Stable Diffusion samples (immiscible/sd/fid.py): reference images prepared with the training transform,
resumably; the score goes through clean-fid with the folders and the mode asked for; bad input says what to do. The
Inception weights cannot be downloaded here, so clean-fid's computation itself runs only where its weights file is."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from immiscible.evaluation.features import INCEPTION_DEFAULT
from immiscible.sd import fid
from immiscible.sd.latent_cache import load_image


def write_images(folder: Path, sizes, seed=0, nested=True):
    rng = np.random.default_rng(seed)
    for k, (w, h) in enumerate(sizes):
        sub = folder / (f"n{k % 2:08d}" if nested else "")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(sub / f"img{k:03d}.JPEG")


def test_reference_images_get_the_training_transform_and_a_rerun_skips_them(tmp_path):
    write_images(tmp_path / "val", [(40, 30), (17, 50), (64, 64), (33, 21)])
    out = fid.prepare_reference(tmp_path / "val", tmp_path / "ref", resolution=16, progress=False)
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 4
    for png in pngs:
        src = tmp_path / "val" / png.relative_to(out).with_suffix(".JPEG")
        assert np.array_equal(np.asarray(Image.open(png)), load_image(src, 16))
    stamp = {p: p.stat().st_mtime_ns for p in pngs}
    fid.prepare_reference(tmp_path / "val", tmp_path / "ref", resolution=16, progress=False)
    assert {p: p.stat().st_mtime_ns for p in pngs} == stamp
    limited = fid.prepare_reference(tmp_path / "val", tmp_path / "ref2", resolution=16, limit=2, progress=False)
    assert len(list(limited.rglob("*.png"))) == 2


def test_score_runs_clean_fid_on_the_two_folders_and_writes_the_result(tmp_path, monkeypatch):
    write_images(tmp_path / "samples", [(16, 16)] * 3)
    write_images(tmp_path / "ref", [(16, 16)] * 5, seed=1, nested=False)
    calls = []

    def fake_compute_fid(fdir1, fdir2, **kw):
        calls.append((fdir1, fdir2, kw))
        return 12.5
    from cleanfid import fid as clean
    monkeypatch.setattr(clean, "compute_fid", fake_compute_fid)
    result = fid.score(tmp_path / "samples", tmp_path / "ref", tmp_path / "out" / "fid.json", device="cpu")
    assert calls[0][:2] == (str(tmp_path / "samples"), str(tmp_path / "ref"))
    assert calls[0][2]["mode"] == "legacy_pytorch"   # comparable with the paper's pytorch-fid numbers
    assert result["fid"] == 12.5 and result["num_samples"] == 3 and result["num_reference"] == 5
    assert json.loads((tmp_path / "out" / "fid.json").read_text()) == result
    fid.score(tmp_path / "samples", tmp_path / "ref", mode="clean", device="cpu")
    assert calls[1][2]["mode"] == "clean"


def test_bad_input_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageNet validation folder"):
        fid.prepare_reference(tmp_path / "missing", tmp_path / "ref")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        fid.prepare_reference(tmp_path / "empty", tmp_path / "ref")
    write_images(tmp_path / "val", [(16, 16)])
    with pytest.raises(ValueError, match="resolution"):
        fid.prepare_reference(tmp_path / "val", tmp_path / "ref", resolution=4)
    with pytest.raises(FileNotFoundError, match="sample the run first"):
        fid.score(tmp_path / "nope", tmp_path / "val")
    with pytest.raises(ValueError, match="holds no images"):
        fid.score(tmp_path / "empty", tmp_path / "val")
    with pytest.raises(ValueError, match="legacy_pytorch"):
        fid.score(tmp_path / "val", tmp_path / "val", mode="tf")


@pytest.mark.skipif(not INCEPTION_DEFAULT.is_file(), reason="clean-fid's Inception weights are not here")
def test_clean_fid_scores_identical_folders_near_zero(tmp_path):
    write_images(tmp_path / "a", [(32, 32)] * 12)
    result = fid.score(tmp_path / "a", tmp_path / "a", device="cpu", num_workers=0)
    assert abs(result["fid"]) < 1e-3

"""The streaming latent cache (immiscible/sd/latent_cache.py) and the official Stable Diffusion settings: an ImageFolder
of mixed-size images encoded in batches into shards with bounded memory, the official resize + center crop, an
interrupted encode resumed to the same bytes, class names from a mapping file, the default sampler (PNDM, 20 steps,
guidance 7.5) and the project's variant, and the errors a user can hit."""
import hashlib
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")

import immiscible.sd.latent_cache as lc  # noqa: E402
import immiscible.sd.train as sd_train  # noqa: E402
from immiscible.sd.components import save_tiny_components  # noqa: E402
from immiscible.sd.latents import encode_dataset, load_latents  # noqa: E402
from immiscible.sd.sample import SampleConfig, make_scheduler, sample_settings  # noqa: E402
from conftest import rss_mb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(40, 30), (30, 52), (32, 32), (75, 41), (17, 23), (64, 48)]   # (W, H): landscape, portrait, square, tiny


def mixed_image_folder(root: Path, per_class: int = 6) -> Path:
    """root/<wnid>/*.JPEG|png of mixed sizes and modes (RGB JPEG, grayscale, RGBA PNG), ImageNet's layout."""
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(("n01440764", "n01443537")):
        folder = root / wnid
        folder.mkdir(parents=True)
        for i in range(per_class):
            w, h = SIZES[(i + c) % len(SIZES)]
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            if i % 3 == 0:
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", format="JPEG")
            elif i % 3 == 1:
                Image.fromarray(pixels[..., 0], "L").save(folder / f"{wnid}_{i}.JPEG", format="JPEG")
            else:
                Image.fromarray(np.dstack([pixels, pixels[..., :1]]), "RGBA").save(folder / f"{wnid}_{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return {"root": root, "pretrained": str(save_tiny_components(root / "tiny-sd", sample_size=16)),
            "images": mixed_image_folder(root / "train")}


def fake_encode(x: torch.Tensor) -> torch.Tensor:
    """A fast stand-in for the VAE: (B, 3, r, r) uint8 -> (B, 4, r/2, r/2), a fixed function of each image."""
    x = x.float() / 127.5 - 1
    pooled = torch.nn.functional.avg_pool2d(x, 2)
    return torch.cat([pooled, pooled[:, :1] * pooled[:, 1:2]], 1)


def test_mixed_sizes_are_resized_and_center_cropped_as_the_official_transform(tiny):
    transforms = pytest.importorskip("torchvision.transforms")
    official = transforms.Compose([transforms.Resize(16, interpolation=transforms.InterpolationMode.BILINEAR),
                                   transforms.CenterCrop(16)])
    for path in sorted(tiny["images"].rglob("*.*")):
        with Image.open(path) as img:
            expected = np.asarray(official(img.convert("RGB")))
        assert np.array_equal(lc.load_image(path, 16), expected), path.name


def test_a_mixed_size_image_folder_is_encoded_by_the_vae_in_batches(tiny):
    batches = []
    real = lc._write_shard

    def spy_write(path, offset, buffer):
        batches.append(("shard", len(buffer)))
        return real(path, offset, buffer)

    lc._write_shard = spy_write
    try:
        out = encode_dataset(tiny["pretrained"], str(tiny["images"].parent), tiny["root"] / "latents", resolution=16,
                             batch_size=4, shard_size=8, dtype="float32", progress=False, device="cpu")
    finally:
        lc._write_shard = real
    latents, labels, classes, meta = load_latents(out, views=True)
    assert latents.shape == (12, 2, 4, 8, 8) and labels.tolist() == [0] * 6 + [1] * 6
    assert classes == ["n01440764", "n01443537"] and meta["resolution"] == "16"   # no mapping: the folder names
    assert [n for _, n in batches] == [8, 4]                                        # two shards, the last one short
    from immiscible.sd.components import load_vae
    vae = load_vae(tiny["pretrained"])
    files = sorted((tiny["images"] / "n01440764").iterdir())
    x = torch.from_numpy(np.stack([lc.load_image(f, 16) for f in files[:3]])).permute(0, 3, 1, 2)
    with torch.no_grad():
        for view, images in ((0, x), (1, x.flip(-1))):
            expected = vae.encode(images.float() / 127.5 - 1).latent_dist.mean * vae.config.scaling_factor
            assert torch.allclose(latents[:3, view], expected, atol=1e-5)
    lc.verify_cache(out)


def test_memory_stays_bounded_one_batch_to_the_encoder_one_shard_in_the_writer(tiny, tmp_path):
    """4096 images (a list of the mixed-size files, repeated) into a 64 MiB cache: the encoder never gets more than a
    batch, the writer never more than a shard, and the peak of traced allocations stays a few shards."""
    files = [str(p) for p in sorted(tiny["images"].rglob("*.*"))]
    (tmp_path / "list.txt").write_text("".join(f"{files[i % len(files)]}\n" for i in range(4096)))
    source = lc.list_source(tmp_path / "list.txt")
    seen, written = [], []
    real_write = lc._write_shard

    def encode(x):
        seen.append(len(x))
        return fake_encode(x)

    def spy_write(path, offset, buffer):
        written.append(buffer.nbytes)
        return real_write(path, offset, buffer)

    lc._write_shard = spy_write
    tracemalloc.start()
    try:
        out = lc.encode_cache(encode, source, tmp_path / "cache", 64, batch_size=32, shard_size=256,
                              dtype="float16", workers=2, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        lc._write_shard = real_write
    total = (out / lc.LATENTS).stat().st_size
    shard = 256 * 2 * 4 * 32 * 32 * 2
    assert total > 64 * 2**20 and max(written) == shard and len(written) == 16
    assert max(seen) <= 32 and sum(seen) == 2 * 4096 + 1                 # both views, plus the one-image probe
    assert peak < 3 * shard < total / 5, (peak, shard, total)


def test_training_reads_the_cache_memory_mapped_not_copied(tiny, tmp_path):
    files = [str(p) for p in sorted(tiny["images"].rglob("*.*"))]
    (tmp_path / "list.txt").write_text("".join(f"{files[i % len(files)]}\n" for i in range(4096)))
    out = lc.encode_cache(fake_encode, lc.list_source(tmp_path / "list.txt"), tmp_path / "cache", 64,
                          batch_size=256, shard_size=1024, progress=False)            # 64 MiB in float16
    before = rss_mb()
    latents, labels, _, _ = sd_train.training_latents(out, hflip=True)                # (8192, 4, 32, 32), a view
    total = sum(float(latents[i:i + 256].float().sum()) for i in range(0, len(latents), 256))
    after = rss_mb()
    assert np.isfinite(total) and latents.shape == (8192, 4, 32, 32) and len(labels) == 8192
    assert after["RssFile"] - before["RssFile"] > 48 and after["RssAnon"] - before["RssAnon"] < 32


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_an_interrupted_encode_resumes_to_the_same_bytes(tiny, tmp_path):
    source = lc.folder_source(tiny["images"])
    kw = dict(resolution=16, batch_size=2, shard_size=4, progress=False)
    lc.encode_cache(fake_encode, source, tmp_path / "whole", **kw)
    calls = []

    def stops_after(k):
        def encode(x):
            calls.append(len(x))
            if len(calls) > k:
                raise KeyboardInterrupt("killed")
            return fake_encode(x)
        return encode

    with pytest.raises(KeyboardInterrupt):      # probe + shard 0 (2 batches x 2 views) + 1 batch of shard 1
        lc.encode_cache(stops_after(1 + 4 + 2), source, tmp_path / "resumed", **kw)
    index = json.loads((tmp_path / "resumed" / lc.INDEX).read_text())
    assert index["shards"][0] is not None and index["shards"][1:] == [None, None] and not index["complete"]
    with pytest.raises(ValueError, match="unfinished .1 of 3 shards.: run the same encode command again"):
        load_latents(tmp_path / "resumed")

    real = lc._write_shard                      # killed while writing shard 1: half of it on disk, not marked done

    def dies_half_way(path, offset, buffer):
        real(path, offset, buffer[:len(buffer) // 2])
        raise KeyboardInterrupt("killed while writing")
    lc._write_shard = dies_half_way
    try:
        with pytest.raises(KeyboardInterrupt):
            lc.encode_cache(fake_encode, source, tmp_path / "resumed", **kw)
    finally:
        lc._write_shard = real
    calls.clear()
    lc.encode_cache(stops_after(10**6), source, tmp_path / "resumed", **kw)
    assert len(calls) == 1 + 2 * 4             # shards 1 and 2 only (shard 0 was kept)
    assert _digests(tmp_path / "resumed") == _digests(tmp_path / "whole")
    lc.verify_cache(tmp_path / "resumed")


def test_a_cache_of_other_settings_is_not_resumed(tiny, tmp_path):
    source = lc.folder_source(tiny["images"])
    lc.encode_cache(fake_encode, source, tmp_path / "c", 16, batch_size=4, shard_size=8, progress=False)
    with pytest.raises(ValueError, match="other settings or images .resolution, shape differ.: give another"):
        lc.encode_cache(fake_encode, source, tmp_path / "c", 8, batch_size=4, shard_size=8, progress=False)
    with pytest.warns(UserWarning, match="deleting it"):
        lc.encode_cache(fake_encode, source, tmp_path / "c", 8, batch_size=4, shard_size=8, progress=False,
                        on_change="restart")
    assert load_latents(tmp_path / "c")[0].shape[-1] == 4
    latents = np.load(tmp_path / "c" / lc.LATENTS, mmap_mode="r+")
    latents[3] += 1                             # damaged on disk
    latents.flush()
    del latents
    with pytest.raises(ValueError, match="shard 0 .* does not match"):
        lc.verify_cache(tmp_path / "c")


def test_class_names_come_from_the_mapping_file_else_the_folder_names(tiny, tmp_path):
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
                       "n01484850 great white shark, white shark\n")
    source = lc.folder_source(tiny["images"], mapping)
    assert source.classes == ["tench", "goldfish"] and source.class_ids == ["n01440764", "n01443537"]
    assert lc.folder_source(tiny["images"]).classes == ["n01440764", "n01443537"]
    sd = sd_train.SDConfig(pretrained="x")
    assert sd_train.class_prompts(source.classes, sd) == ["tench", "goldfish", ""]     # the official prompt
    project = sd_train.settings(str(ROOT / "params.yaml"), "paper_scratch_project")[1]
    assert sd_train.class_prompts(source.classes, project)[:2] == ["a photo of a tench", "a photo of a goldfish"]
    files = sorted(tiny["images"].rglob("*.*"))    # a list: a class per line after a tab, else the folder name
    (tmp_path / "list.txt").write_text(f"{files[0]}\tn01484850\n{files[7]}\n")
    listed = lc.list_source(tmp_path / "list.txt", mapping)
    assert listed.class_ids == ["n01443537", "n01484850"] and listed.classes == ["goldfish", "great white shark"]
    assert listed.labels == [1, 0]
    out = lc.encode_cache(fake_encode, source, tmp_path / "c", 16, batch_size=4, shard_size=8, progress=False)
    assert load_latents(out)[2] == ["tench", "goldfish"]
    assert json.loads(load_latents(out)[3]["class_ids"]) == ["n01440764", "n01443537"]


def test_the_official_profiles_and_the_project_variant():
    params = str(ROOT / "params.yaml")
    official = SampleConfig("pndm", 20, 7.5)
    assert SampleConfig() == official and sample_settings() == official
    for name in ("paper_scratch", "paper_finetune"):
        assert sample_settings(params, name) == official
        cfg, sd = sd_train.settings(params, name)
        assert (sd.prompt_template, sd.prompt_dropout, sd.hflip, cfg.hflip) == ("{}", 0.0, True, False)
    assert (sd_train.settings(params, "paper_scratch")[0].batch_size,
            sd_train.settings(params, "paper_finetune")[0].batch_size) == (2048, 512)
    for name in ("paper_scratch_project", "paper_finetune_project"):
        assert sample_settings(params, name) == SampleConfig("ddim", 50, 1.5)
        sd = sd_train.settings(params, name)[1]
        assert (sd.prompt_template, sd.prompt_dropout, sd.hflip) == ("a photo of a {}", 0.1, False)
    assert sample_settings(params, "paper_scratch", {"steps": 50, "guidance_scale": None}).steps == 50
    ddpm = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    pndm = make_scheduler("pndm", ddpm)
    assert type(pndm).__name__ == "PNDMScheduler" and pndm.config.skip_prk_steps
    assert type(make_scheduler("ddim", ddpm)).__name__ == "DDIMScheduler"


def test_the_sample_command_uses_the_profiles_sampler(tiny, tmp_path, monkeypatch):
    import immiscible.sd.sample as sample
    out = lc.encode_cache(fake_encode, lc.folder_source(tiny["images"]), tmp_path / "c", 16, batch_size=4,
                          shard_size=8, progress=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps(
        {"settings": {"stable_diffusion": {"conditioning": "class", "prompt_template": "{}"}}}))
    got = []
    monkeypatch.setattr(sample, "sample_folder", lambda *a, **k: got.append(a))
    base = ["--pretrained", "x", "--run-dir", str(run), "--latents", str(out), "--out", str(tmp_path / "s"),
            "--params", str(ROOT / "params.yaml")]
    sample.main(base)                                              # no profile: the official sampler
    sample.main(base + ["--profile", "paper_scratch_project"])
    sample.main(base + ["--profile", "paper_scratch_project", "--steps", "10"])
    assert [a[6] for a in got] == [SampleConfig(), SampleConfig("ddim", 50, 1.5), SampleConfig("ddim", 10, 1.5)]
    assert got[0][5] == "{}" and got[0][4] == 50 and got[0][9] == 16      # template, per class, resolution


def test_bad_inputs_say_what_to_do(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="no image folder .*one subfolder per class"):
        lc.folder_source(tmp_path / "missing")
    (tmp_path / "empty" / "n01").mkdir(parents=True)
    (tmp_path / "empty" / "n01" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no images .*class folders"):
        lc.folder_source(tmp_path / "empty")
    (tmp_path / "bad" / "n01").mkdir(parents=True)
    (tmp_path / "bad" / "n01" / "broken.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot read image .*broken.JPEG.*Remove or replace the file"):
        lc.encode_cache(fake_encode, lc.folder_source(tmp_path / "bad"), tmp_path / "c", 16, batch_size=1,
                        shard_size=1, progress=False)
    mapping = tmp_path / "map.txt"
    mapping.write_text("n01440764 tench, Tinca tinca\n")
    with pytest.raises(ValueError, match="names no class for 1 of the 2 folders .*n01443537.*add a"):
        lc.folder_source(tiny["images"], mapping)
    mapping.write_text("n01440764 tench\nn01443537\n")
    with pytest.raises(ValueError, match="line 2: 'n01443537' has no class name"):
        lc.folder_source(tiny["images"], mapping)
    with pytest.raises(FileNotFoundError, match="no class-name file"):
        lc.folder_source(tiny["images"], tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="shard_size=6 must be a multiple of batch_size=4"):
        lc.encode_cache(fake_encode, lc.folder_source(tiny["images"]), tmp_path / "c2", 16, batch_size=4,
                        shard_size=6, progress=False)
    with pytest.raises(FileNotFoundError, match="encode the dataset first"):
        load_latents(tmp_path / "nothing")
    plain = lc.encode_cache(fake_encode, lc.folder_source(tiny["images"]), tmp_path / "plain", 16, batch_size=4,
                            shard_size=8, mirror=False, progress=False)
    with pytest.raises(ValueError, match="hflip needs the mirrored images' latents.*--sd hflip=false"):
        sd_train.training_latents(plain, hflip=True)
    assert sd_train.training_latents(plain, hflip=False)[0].shape == (12, 4, 8, 8)
    cfg = sd_train.from_dict(sd_train.TrainConfig, {"hflip": True, "output_dir": str(tmp_path / "run")})
    with pytest.raises(ValueError, match="train hflip flips the latents"):
        sd_train.train_sd(cfg, sd_train.SDConfig(pretrained=tiny["pretrained"]), plain)

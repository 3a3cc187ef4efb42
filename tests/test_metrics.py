"""FD/KID, the proxy feature extractor, sampling shapes."""
import numpy as np
import pytest
import torch

from immiscible.config import from_dict
from immiscible.evaluation.features import ClassifierConfig, get_extractor, load_proxy_extractor, train_classifier, classifier_dir
from immiscible.evaluation.distances import frechet_distance, feature_stats, kernel_distance
from immiscible.models import build_unet
from immiscible.diffusion.sampling import sample_images
from immiscible.experiments.figures import save_grid
from immiscible.engine.config import TrainConfig


def test_fd_is_zero_for_same_features_and_grows_with_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2000, 8))
    stats = feature_stats(ref)
    assert frechet_distance(ref, stats) == pytest.approx(0.0, abs=1e-6)
    shifted = frechet_distance(ref + 1.0, stats)
    assert shifted == pytest.approx(8.0, rel=1e-3)  # |mu1 - mu2|^2
    assert kernel_distance(ref + 1.0, ref, num_subsets=10, max_subset_size=200) > \
        kernel_distance(rng.normal(size=(2000, 8)), ref, num_subsets=10, max_subset_size=200)
    assert kernel_distance(ref, ref[::-1], 5, 100, seed=3) == kernel_distance(ref, ref[::-1], 5, 100, seed=3)


def test_proxy_classifier_trains_caches_and_extracts(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    images = torch.randint(0, 100, (200, 3, 8, 8), generator=g, dtype=torch.uint8) + (labels * 150).to(torch.uint8)[:, None, None, None]
    cfg = ClassifierConfig(dataset="toy", resolution=8, epochs=3, batch_size=32, out_dir=str(tmp_path), progress=False)
    info = train_classifier(cfg, images, labels)
    assert info["test_accuracy"] > 0.9  # the two classes differ in brightness
    extractor = load_proxy_extractor(classifier_dir(tmp_path, "toy", 8))
    feats = extractor(images.permute(0, 2, 3, 1).numpy())
    assert feats.shape == (200, 128) and "proxy" in extractor.label and "FID" not in extractor.label
    with pytest.raises(ValueError, match="'fancy'.*auto.*inception.*proxy"):
        get_extractor("fancy")


def test_proxy_classifier_training_is_bitwise_reproducible(tmp_path):
    """The same config and data give the same weights (same machine and thread count): a retrained classifier
    cannot move the FD levels by itself; another seed gives other weights."""
    from safetensors.torch import load_file
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(128) % 2
    images = torch.randint(0, 255, (128, 3, 8, 8), generator=g, dtype=torch.uint8)
    weights = []
    for i, seed in enumerate((0, 0, 1)):
        cfg = ClassifierConfig(dataset="toy", resolution=8, epochs=2, batch_size=32, width=8, feature_dim=8,
                               seed=seed, out_dir=str(tmp_path / str(i)), progress=False)
        train_classifier(cfg, images, labels)
        weights.append(load_file(str(classifier_dir(tmp_path / str(i), "toy", 8) / "classifier.safetensors")))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


@pytest.mark.parametrize("objective", ["eps", "flow"])
def test_sampling_shapes_and_grid(tmp_path, objective):
    cfg = from_dict(TrainConfig, {"resolution": 8, "objective": objective})
    model = build_unet("tiny", 8)
    images = sample_images(model, cfg, 5, num_inference_steps=2, batch_size=4, progress=False)
    assert images.shape == (5, 8, 8, 3) and images.dtype == np.uint8
    again = sample_images(model, cfg, 5, num_inference_steps=2, batch_size=4, progress=False)
    assert (images == again).all()  # seeded
    assert save_grid(images, tmp_path / "g.png").stat().st_size > 0


def test_inception_weights_file_is_used_when_given_and_labelled_fid(tmp_path):
    """A stand-in TorchScript file with clean-fid's layout (``.layers`` maps (B,3,299,299) to (B,2048,1,1))."""
    class Layers(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 1).repeat(1, 683, 1, 1)[:, :2048]

    class Base(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Layers()

        def forward(self, x):
            return self.layers(x)

    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(Base()).save(str(path))
    extractor = get_extractor("auto", classifier=None, inception_path=str(path))
    assert extractor.name == "inception" and extractor.label == "FID"
    grey = np.full((2, 8, 8, 3), 128, dtype=np.uint8)       # 128 is the zero of clean-fid's normalisation
    white = np.full((1, 8, 8, 1), 255, dtype=np.uint8)      # grayscale is repeated to 3 channels
    assert extractor(grey).shape == (2, 2048) and np.allclose(extractor(grey), 0, atol=1e-6)
    assert np.allclose(extractor(white), 127 / 128, atol=1e-3)
    with pytest.raises(FileNotFoundError, match="inception weights"):
        get_extractor("inception", inception_path=str(tmp_path / "missing.pt"))
    # `auto` never turns a run below the data's native resolution into something labelled FID
    labels = torch.arange(64) % 2
    images = torch.randint(0, 200, (64, 3, 8, 8), dtype=torch.uint8)
    train_classifier(ClassifierConfig(dataset="toy", resolution=8, epochs=1, batch_size=16, width=8, feature_dim=8,
                                      out_dir=str(tmp_path), progress=False), images, labels)
    proxy = get_extractor("auto", classifier_dir(tmp_path, "toy", 8), inception_path=str(path),
                          native_resolution=False)
    assert proxy.name == "proxy" and "FID" not in proxy.label


def test_frechet_distance_without_sqrtm_disp_matches_clean_fid(monkeypatch):
    """Where scipy's sqrtm no longer takes disp= (the GPU image's scipy may be newer), the FD is computed by the same
    steps as clean-fid's and gives its value."""
    import scipy.linalg
    from immiscible.evaluation.distances import frechet_distance_from_stats
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(0.3, 1.2, size=(400, 8))
    expected = frechet_distance(a, feature_stats(b))
    assert frechet_distance_from_stats(*feature_stats(a), *feature_stats(b)) == pytest.approx(expected, rel=1e-9)
    real = scipy.linalg.sqrtm

    def sqrtm_without_disp(A, **kwargs):
        if "disp" in kwargs:
            raise TypeError("sqrtm() got an unexpected keyword argument 'disp'")
        return real(A, **kwargs)
    monkeypatch.setattr(scipy.linalg, "sqrtm", sqrtm_without_disp)
    assert frechet_distance(a, feature_stats(b)) == pytest.approx(expected, rel=1e-9)

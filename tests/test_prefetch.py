"""Background assignment gives exactly the synchronous result, in order."""
import pytest
import torch

from immiscible.engine.config import TrainConfig
from immiscible.noise.assignment import mean_pair_distance
from immiscible.noise.prefetch import prefetch_assigned_noise
from immiscible.noise.source import draw_noise


def _batches(n=6, B=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(B, 3, 4, 4, generator=g) * 2 - 1, torch.arange(B)) for _ in range(n)]


@pytest.mark.parametrize("method", ["vanilla", "exact", "quantized", "greedy", "knn"])
@pytest.mark.parametrize("ahead", [1, 3])
def test_prefetched_noise_equals_synchronous_noise(method, ahead):
    batches = _batches()
    g_sync = torch.Generator().manual_seed(7)
    expected = [draw_noise(x0, g_sync, method, knn_k=4)[0] for x0, _ in batches]
    got = list(prefetch_assigned_noise(batches, method, torch.Generator().manual_seed(7), knn_k=4, ahead=ahead))
    assert len(got) == len(batches)
    for (batch, noise), ref, orig in zip(got, expected, batches):
        assert batch is orig
        assert torch.equal(noise, ref)


def test_prefetched_knn_defaults_to_the_training_loops_k():
    """Without ``knn_k`` the prefetcher draws what a training run with the default config draws (it once kept 1
    candidate while training kept 4)."""
    batches = _batches(2)
    g_train = torch.Generator().manual_seed(3)
    expected = [draw_noise(x0, g_train, "knn", knn_k=TrainConfig().knn_k)[0] for x0, _ in batches]
    got = [noise for _, noise in prefetch_assigned_noise(batches, "knn", torch.Generator().manual_seed(3))]
    assert TrainConfig().knn_k > 1 and all(torch.equal(a, b) for a, b in zip(got, expected))


def test_assigned_noise_is_closer_than_vanilla():
    x0 = _batches(1, B=128)[0][0]
    v = draw_noise(x0, torch.Generator().manual_seed(0), "vanilla")[0]
    e = draw_noise(x0, torch.Generator().manual_seed(0), "exact")[0]
    assert sorted(map(tuple, v.flatten(1).tolist())) == sorted(map(tuple, e.flatten(1).tolist()))
    assert mean_pair_distance(x0, e) < mean_pair_distance(x0, v)


def test_errors():
    with pytest.raises(ValueError, match="unknown noise method"):
        draw_noise(torch.zeros(2, 3), None, "ot")
    with pytest.raises(ValueError, match="for prefetching"):
        next(prefetch_assigned_noise(_batches(), "exact_class"))
    with pytest.raises(ValueError, match="ahead"):
        next(prefetch_assigned_noise(_batches(), "exact", ahead=0))

"""The samplers against an analytic model: for point-mass data x0 = c the optimal denoiser of every objective is
known in closed form, so DDIM and Euler must land on c, and the deterministic trajectories are known step by step."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from immiscible.diffusion.sampling import ddim_sample, flow_euler_sample, sample_images
from immiscible.diffusion.schedules import ddim_scheduler
from immiscible.engine.config import TrainConfig

T = 1000
SHAPE = (3, 8, 8)


def _alphas_cumprod(cfg):
    """DDPM linear betas, written out here (float64): alpha_bar_t = prod_{s<=t} (1 - beta_s)."""
    betas = np.linspace(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps, dtype=np.float64)
    return torch.from_numpy(np.cumprod(1.0 - betas))


def _point():
    """c in [-0.5, 0.5] on the uint8 grid: (c + 1) * 127.5 is an integer k, far from to_uint8's rounding edges."""
    k = torch.randint(64, 192, SHAPE, generator=torch.Generator().manual_seed(1))
    return k.double() / 127.5 - 1, k


class PointMassModel(torch.nn.Module):
    """The exact model for data x0 = c: eps, v, x0 or flow-velocity prediction from (x, timestep).

    It records, at every call, the noise its input implies, n = (x_t - sqrt(abar) c) / sqrt(1 - abar) for diffusion
    and n = (x_t - (1 - s) c) / s for flow (s = timestep / T). For deterministic DDIM (eta=0) and for Euler on a
    point mass, that noise stays the initial one along the whole trajectory."""

    def __init__(self, objective, c, cfg):
        super().__init__()
        self.objective, self.c, self.T = objective, c, cfg.num_train_timesteps
        self.alphas_cumprod = _alphas_cumprod(cfg)
        self.config = SimpleNamespace(in_channels=c.shape[0])
        self.timesteps, self.implied_noise = [], []

    def forward(self, x, timestep):
        x = x.double()
        c = self.c.to(x.device)
        self.timesteps.append(timestep.detach().cpu().clone())
        if self.objective == "flow":
            assert timestep.is_floating_point() and timestep.shape == (x.shape[0],)
            s = (timestep.double() / self.T).view(-1, 1, 1, 1)
            assert ((s > 0) & (s <= 1)).all(), "flow model time must be t * T with t in (0, 1]"
            self.implied_noise.append((x - (1 - s) * c) / s)
            return SimpleNamespace(sample=((x - c) / s).float())  # the velocity noise - x0 given x_t
        assert not timestep.is_floating_point(), "DDIM passes integer timesteps"
        a = self.alphas_cumprod[int(timestep)]
        eps = (x - a.sqrt() * c) / (1 - a).sqrt()
        self.implied_noise.append(eps)
        out = {"eps": eps, "v": a.sqrt() * eps - (1 - a).sqrt() * c, "x0": c.expand_as(x)}[self.objective]
        return SimpleNamespace(sample=out.float())


def _noise(batch=4, seed=0):
    return torch.randn((batch,) + SHAPE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("objective", ["eps", "v", "x0"])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_reaches_the_point_mass_with_the_exact_model(objective, steps):
    cfg = TrainConfig(objective=objective)
    c, _ = _point()
    model = PointMassModel(objective, c, cfg)
    noise = _noise()
    out = ddim_sample(model, cfg, noise, num_inference_steps=steps)
    assert out.shape == noise.shape
    assert torch.allclose(out.double(), c.expand_as(out), atol=1e-4), float((out.double() - c).abs().max())
    # DDIM's "leading" timesteps, one model call each: T - T/steps, ..., T/steps, 0
    ratio = T // steps
    assert [int(t) for t in model.timesteps] == list(range((steps - 1) * ratio, -1, -ratio))
    # deterministic DDIM keeps the implied noise fixed: x_t = sqrt(abar_t) c + sqrt(1 - abar_t) n at every step
    first = model.implied_noise[0]
    for n in model.implied_noise[1:]:
        assert torch.allclose(n, first, atol=1e-3)


def test_ddim_uses_the_same_alphas_as_the_objectives():
    """The schedule that the fake model computes by hand is the scheduler's (so the test above is meaningful)."""
    cfg = TrainConfig(objective="eps")
    torch.testing.assert_close(ddim_scheduler(cfg, 10).alphas_cumprod.double(), _alphas_cumprod(cfg),
                               rtol=1e-5, atol=1e-6)


def test_ddim_with_a_mismatched_prediction_type_misses_the_point_mass():
    """The check can fail: an x0-predicting model sampled as if it predicted eps does not land on c."""
    cfg = TrainConfig(objective="eps")
    c, _ = _point()
    out = ddim_sample(PointMassModel("x0", c, cfg), cfg, _noise(), num_inference_steps=10)
    assert (out.double() - c).abs().max() > 0.1


@pytest.mark.parametrize("steps", [1, 7, 50])
def test_flow_euler_reaches_the_point_mass_with_the_exact_velocity(steps):
    cfg = TrainConfig(objective="flow")
    c, _ = _point()
    model = PointMassModel("flow", c, cfg)
    noise = _noise(seed=2)
    out = flow_euler_sample(model, cfg, noise, num_inference_steps=steps)
    assert torch.allclose(out.double(), c.expand_as(out), atol=1e-4)
    # model time is t * T for t = 1, 1 - 1/steps, ..., 1/steps (never t = 0, where the velocity is undefined)
    expected = torch.linspace(1.0, 0.0, steps + 1)[:-1] * T
    assert len(model.timesteps) == steps
    for got, t in zip(model.timesteps, expected):
        torch.testing.assert_close(got, t.expand(noise.shape[0]))
    # the straight path: x_t = (1 - t) c + t noise, with the initial noise, at every step
    for n in model.implied_noise:
        assert torch.allclose(n, noise.double(), atol=1e-4)


@pytest.mark.parametrize("objective", ["eps", "v", "x0", "flow"])
def test_sample_images_returns_the_point_mass_as_uint8(objective):
    """End to end: batches, the sampler for the objective (Euler for flow, DDIM otherwise), the uint8 conversion."""
    cfg = TrainConfig(objective=objective, resolution=SHAPE[1])
    c, k = _point()
    model = PointMassModel(objective, c, cfg)
    images = sample_images(model, cfg, num_samples=5, num_inference_steps=10, batch_size=2, seed=0,
                           progress=False)
    assert images.shape == (5, SHAPE[1], SHAPE[2], SHAPE[0]) and images.dtype == np.uint8
    expected = k.permute(1, 2, 0).numpy().astype(np.uint8)
    for img in images:
        np.testing.assert_array_equal(img, expected)
    assert len(model.timesteps) == 3 * 10  # three batches (2 + 2 + 1), ten model calls each

"""Consistency training from scratch (Song et al. 2023, "Consistency Models"; improved recipe of Song & Dhariwal
2023, "Improved Techniques for Training Consistency Models", iCT), on a diffusers ``UNet2DModel``.

The consistency function of a network F (EDM-style boundary condition, measured from sigma_min so that
f(x, sigma_min) = x exactly):

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))
    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)
    c_out  = (sigma - sigma_min) sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2),   c_noise = 1000 * 0.25 * ln(sigma)

Consistency training (no teacher network): for a pair of adjacent Karras noise levels sigma_i < sigma_{i+1} and ONE
noise z (the batch's assigned noise: Immiscible Diffusion pairs z with x0 once, before any scaling),

    loss = lambda(sigma_i) * d(f_theta(x0 + sigma_{i+1} z, sigma_{i+1}), stopgrad f_theta(x0 + sigma_i z, sigma_i))

with lambda = 1 / (sigma_{i+1} - sigma_i), d the pseudo-Huber distance sqrt(|a - b|^2 + c^2) - c with
c = 0.00054 sqrt(dim), i drawn from the discretised lognormal(P_mean, P_std), the number of levels doubling from s0
to s1 over training, and the "teacher" the same network under stop-gradient with the same dropout randomness.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from immiscible.data import to_uint8
from immiscible.diffusion.losses import SplitLoss
from immiscible.diffusion.objectives import append_dims


@dataclass(frozen=True)
class ConsistencyConfig:
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0                      # Karras discretisation
    sigma_data: float = 0.5
    s0: int = 10                          # discretisation curriculum: levels double from s0 ...
    s1: int = 1280                        # ... to s1 over training (iCT)
    p_mean: float = -1.1                  # lognormal noise-level sampling (iCT)
    p_std: float = 2.0
    huber_c: float | None = None          # None: 0.00054 * sqrt(C * H * W) (iCT)
    two_step_sigma: float = 0.821         # the intermediate level of two-step sampling (iCT, CIFAR-10)


def check_consistency_config(cfg: ConsistencyConfig) -> ConsistencyConfig:
    """ValueError, naming the field, for a config no consistency model can be trained with."""
    if not 0 < cfg.sigma_min < cfg.two_step_sigma < cfg.sigma_max:
        raise ValueError(f"need 0 < sigma_min < two_step_sigma < sigma_max; got {cfg.sigma_min}, "
                         f"{cfg.two_step_sigma}, {cfg.sigma_max}")
    if not 1 <= cfg.s0 <= cfg.s1:
        raise ValueError(f"need 1 <= s0 <= s1 (discretisation curriculum); got s0={cfg.s0}, s1={cfg.s1}")
    if cfg.rho <= 0 or cfg.sigma_data <= 0 or cfg.p_std <= 0 or (cfg.huber_c is not None and cfg.huber_c <= 0):
        raise ValueError("rho, sigma_data, p_std and huber_c must be > 0")
    return cfg


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """n noise levels in increasing order, sigma_0 = sigma_min ... sigma_{n-1} = sigma_max (Karras et al. 2022)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (lo + ramp * (hi - lo)) ** rho


def discretisation_steps(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """N(k) of iCT's exponential curriculum: s0 * 2^floor(k / K') levels (capped at s1), plus one, where
    K' = floor(K / (log2(s1 / s0) + 1)). A pure function of the step, so every process agrees."""
    stage = max(1, math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1)))
    return min(s0 * 2 ** (step // stage), s1) + 1


def lognormal_index_probs(sigmas: torch.Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> torch.Tensor:
    """p(i) for i in [0, N-2] of the pair (sigma_i, sigma_{i+1}): the lognormal mass between the two levels."""
    cdf = torch.erf((sigmas.log() - p_mean) / (math.sqrt(2) * p_std))
    mass = cdf[1:] - cdf[:-1]
    return mass / mass.sum()


def scalings(sigma: torch.Tensor, sigma_data: float, sigma_min: float) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in) at ``sigma``; c_skip = 1 and c_out = 0 at sigma_min (the boundary condition)."""
    c_skip = sigma_data ** 2 / ((sigma - sigma_min) ** 2 + sigma_data ** 2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
    c_in = 1 / (sigma ** 2 + sigma_data ** 2).sqrt()
    return c_skip, c_out, c_in


def noise_conditioning(sigma: torch.Tensor) -> torch.Tensor:
    """c_noise = 1000 * 0.25 ln(sigma): the network's time input."""
    return 250.0 * sigma.log()


def consistency_function(model, x: torch.Tensor, sigma: torch.Tensor, cfg: ConsistencyConfig,
                         **model_kwargs) -> torch.Tensor:
    """f(x, sigma) = c_skip x + c_out F(c_in x, c_noise) for a batch x (B, C, H, W) and levels sigma (B,)."""
    sigma = sigma.to(x.device, torch.float32)
    c_skip, c_out, c_in = (append_dims(c, x.dim()) for c in scalings(sigma, cfg.sigma_data, cfg.sigma_min))
    out = model(c_in * x, noise_conditioning(sigma), **model_kwargs).sample.float()
    return c_skip * x.float() + c_out * out


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """Per-sample sqrt(|a - b|^2 + c^2) - c (B,)."""
    return ((a - b).float().flatten(1).pow(2).sum(1) + c ** 2).sqrt() - c


def huber_c(cfg: ConsistencyConfig, dim: int) -> float:
    return cfg.huber_c if cfg.huber_c is not None else 0.00054 * math.sqrt(dim)


class _SameRandomness:
    """Replays the global RNG of ``device`` (dropout): the teacher pass draws the student pass's masks."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def replay(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def consistency_training_loss(model, x0: torch.Tensor, noise: torch.Tensor, sigma_i: torch.Tensor,
                              sigma_next: torch.Tensor, cfg: ConsistencyConfig, **model_kwargs) -> torch.Tensor:
    """The iCT loss of one batch: both points of each pair are built from the same ``noise`` (B, C, H, W)."""
    sigma_i = sigma_i.to(x0.device, torch.float32)
    sigma_next = sigma_next.to(x0.device, torch.float32)
    rng = _SameRandomness(x0.device)
    student = consistency_function(model, x0 + append_dims(sigma_next, x0.dim()) * noise, sigma_next, cfg,
                                   **model_kwargs)
    rng.replay()
    with torch.no_grad():
        teacher = consistency_function(model, x0 + append_dims(sigma_i, x0.dim()) * noise, sigma_i, cfg,
                                       **model_kwargs)
    weight = 1 / (sigma_next - sigma_i)
    return (weight * pseudo_huber(student, teacher, huber_c(cfg, x0[0].numel()))).mean()


def make_consistency_loss(cfg: ConsistencyConfig, total_steps: int) -> SplitLoss:
    """The engine's ``loss_fn(model, x0, noise, generator, step, labels)`` for consistency training: the step's
    discretisation from the curriculum, the pair index from the step's generator (lognormal), then
    ``consistency_training_loss`` on the step's (assigned) noise."""
    check_consistency_config(cfg)

    def draw(x0, generator, step, labels=None) -> dict:
        n = discretisation_steps(step, total_steps, cfg.s0, cfg.s1)
        sigmas = karras_sigmas(n, cfg.sigma_min, cfg.sigma_max, cfg.rho).to(x0.device)  # no host sync below
        probs = lognormal_index_probs(sigmas, cfg.p_mean, cfg.p_std)
        i = torch.multinomial(probs, x0.shape[0], replacement=True, generator=generator)
        drawn = {"sigma_i": sigmas[i], "sigma_next": sigmas[i + 1]}
        return drawn if labels is None else {**drawn, "class_labels": labels}

    def compute(model, x0, noise, sigma_i, sigma_next, **kwargs):
        return consistency_training_loss(model, x0, noise, sigma_i, sigma_next, cfg, **kwargs)
    return SplitLoss(draw, compute, "consistency")


def sampling_sigmas(cfg: ConsistencyConfig, num_steps: int) -> tuple[float, ...]:
    """The levels of ``num_steps``-step sampling: (sigma_max,) for one step, (sigma_max, two_step_sigma) for two."""
    if num_steps not in (1, 2):
        raise ValueError(f"num_steps={num_steps}: one- or two-step sampling (1 or 2)")
    return (cfg.sigma_max,) if num_steps == 1 else (cfg.sigma_max, cfg.two_step_sigma)


@torch.no_grad()
def sample_consistency(model, noise: torch.Tensor, sigmas, cfg: ConsistencyConfig,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): x = f(sigma_0 z, sigma_0); for each further
    level s: x = f(x + sqrt(s^2 - sigma_min^2) z', s). ``noise`` is z (B, C, H, W); z' comes from ``generator``
    on the CPU. Returns x0 in [-1, 1]."""
    b = noise.shape[0]
    x = consistency_function(model, noise * sigmas[0], torch.full((b,), float(sigmas[0])), cfg)
    for s in sigmas[1:]:
        z = torch.randn(noise.shape, generator=generator).to(noise.device)
        x = x + math.sqrt(s ** 2 - cfg.sigma_min ** 2) * z
        x = consistency_function(model, x, torch.full((b,), float(s)), cfg)
    return x.clamp(-1, 1)


def consistency_samples(model, cfg: ConsistencyConfig, num_samples: int, resolution: int, num_steps: int = 1,
                        batch_size: int = 256, seed: int = 0, device: str | torch.device = "cpu",
                        autocast: bool = True) -> np.ndarray:
    """``num_samples`` images as uint8 (N, H, W, C) by ``num_steps``-step consistency sampling. The noise is drawn
    on the CPU from ``seed`` (the same images on every device; the first level's noise is the same for one- and
    two-step sampling); the model runs on ``device`` in bf16 autocast on CUDA."""
    device = torch.device(device)
    model = model.to(device).eval()
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if autocast and device.type == "cuda"
           else contextlib.nullcontext())
    channels, sigmas = model.config.in_channels, sampling_sigmas(cfg, num_steps)
    first, later = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    out = []
    for start in range(0, num_samples, batch_size):
        b = min(batch_size, num_samples - start)
        z = torch.randn(b, channels, resolution, resolution, generator=first).to(device)
        with amp:
            out.append(to_uint8(sample_consistency(model, z, sigmas, cfg, later)))
    return np.concatenate(out)

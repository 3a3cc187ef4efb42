"""Training objectives as pure functions of (x0, noise, t): each returns (x_t, target) from ONE noise tensor.

The noise passed in is the already-assigned noise (Immiscible Diffusion, Li et al. 2024, Sec. 3): because x_t
and the target are built here from the same argument, they cannot disagree (a peer library built x_t from the
permuted noise but the target from the original one).

Diffusion (DDPM, Ho et al. 2020; t integer in [0, T)):
    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise
    eps-target: noise;  x0-target: x0;  v-target (Salimans & Ho 2022): sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) x0
Flow matching / rectified flow (Liu et al. 2022; t float in [0, 1], t=0 data, t=1 noise):
    x_t = (1 - t) x0 + t noise,  target velocity dx_t/dt = noise - x0
"""
from __future__ import annotations

import torch

OBJECTIVES = ("eps", "v", "x0", "flow")
# diffusers' name of each diffusion objective (DDPMScheduler/DDIMScheduler ``prediction_type``).
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def check_objective(objective: str) -> None:
    """Raise a ValueError naming the allowed objectives when ``objective`` is unknown."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) with ``ndim`` dimensions, for broadcasting over images."""
    return v.reshape(v.shape + (1,) * (ndim - v.dim()))


def alpha_bar_at(alphas_cumprod: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """alpha_bar_t for integer timesteps t (B,), shaped (B, 1, 1, 1) for ndim=4."""
    return append_dims(alphas_cumprod.to(t.device)[t.long()], ndim)


def q_sample(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise (DDPM Eq. 4)."""
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


def eps_objective(x0, noise, t, alphas_cumprod):
    """(x_t, noise): predict the noise (DDPM)."""
    alpha_bar = alpha_bar_at(alphas_cumprod, t, x0.dim()).to(x0.dtype)
    return q_sample(x0, noise, alpha_bar), noise


def v_objective(x0, noise, t, alphas_cumprod):
    """(x_t, v) with v = sqrt(alpha_bar) noise - sqrt(1 - alpha_bar) x0 (v-prediction)."""
    alpha_bar = alpha_bar_at(alphas_cumprod, t, x0.dim()).to(x0.dtype)
    v = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
    return q_sample(x0, noise, alpha_bar), v


def x0_objective(x0, noise, t, alphas_cumprod):
    """(x_t, x0): predict the clean image."""
    alpha_bar = alpha_bar_at(alphas_cumprod, t, x0.dim()).to(x0.dtype)
    return q_sample(x0, noise, alpha_bar), x0


def flow_objective(x0, noise, t, alphas_cumprod=None):
    """(x_t, noise - x0) with x_t = (1 - t) x0 + t noise, t in [0, 1] (rectified flow)."""
    t = append_dims(t.to(x0.dtype), x0.dim())
    return (1 - t) * x0 + t * noise, noise - x0


_FUNCTIONS = {"eps": eps_objective, "v": v_objective, "x0": x0_objective, "flow": flow_objective}


def training_pair(objective: str, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                  alphas_cumprod: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target) of ``objective`` built from x0 and the given (assigned) noise."""
    check_objective(objective)
    if objective != "flow" and alphas_cumprod is None:
        raise ValueError(f"objective {objective!r} needs alphas_cumprod (from the DDPMScheduler)")
    return _FUNCTIONS[objective](x0, noise, t, alphas_cumprod)


def sample_t(objective: str, batch_size: int, num_train_timesteps: int,
             generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
    """Training times: integers uniform in [0, T) for diffusion, floats uniform in [0, 1] for flow."""
    check_objective(objective)
    gen_device = generator.device if generator is not None else device
    if objective == "flow":
        return torch.rand(batch_size, generator=generator, device=gen_device).to(device)
    return torch.randint(0, num_train_timesteps, (batch_size,), generator=generator, device=gen_device).to(device)


def model_time(objective: str, t: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """The timestep the UNet sees: t itself for diffusion, t * T for flow (same embedding range)."""
    return t * num_train_timesteps if objective == "flow" else t


def predict_x0(objective: str, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
               alphas_cumprod: torch.Tensor | None = None) -> torch.Tensor:
    """The model's estimate of x0 from its output at (x_t, t), for every objective."""
    check_objective(objective)
    if objective == "flow":
        return x_t - append_dims(t.to(x_t.dtype), x_t.dim()) * model_output
    alpha_bar = alpha_bar_at(alphas_cumprod, t, x_t.dim()).to(x_t.dtype)
    if objective == "eps":
        return (x_t - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()
    if objective == "v":
        return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * model_output
    return model_output

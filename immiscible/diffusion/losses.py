"""The denoising loss (DDPM, Ho et al. 2020; v: Salimans & Ho 2022; rectified flow: Liu et al. 2022) built from the
already-assigned noise: x_t and the target come from the same ``noise`` argument (``objectives.training_pair``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from immiscible.diffusion.objectives import model_time, sample_t, training_pair


def denoising_loss(model, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, objective: str,
                   alphas_cumprod: torch.Tensor | None, num_train_timesteps: int, **model_kwargs) -> torch.Tensor:
    """MSE between the model's output at (x_t, t) and the objective's target, both built from ``noise``."""
    x_t, target = training_pair(objective, x0, noise, t, alphas_cumprod)  # one noise for both
    prediction = model(x_t, model_time(objective, t, num_train_timesteps), **model_kwargs).sample
    return F.mse_loss(prediction.float(), target.float())


def drop_labels(labels: torch.Tensor, label_dropout: float, null_label: int,
                generator: torch.Generator | None) -> torch.Tensor:
    """A share ``label_dropout`` of the labels (drawn from ``generator``) replaced by ``null_label``: the
    unconditional model of classifier-free guidance (Ho & Salimans 2022)."""
    drop = torch.rand(labels.shape, generator=generator, device=generator.device if generator else "cpu")
    return torch.where(drop.to(labels.device) < label_dropout, torch.full_like(labels, null_label), labels)


class SplitLoss:
    """A training loss in two parts, so that many runs can share the second one (engine/side_by_side.py):

    - ``draw(x0, generator, step, labels) -> dict`` of tensors: everything random of the step (timesteps, label
      dropout, noise-level indices), drawn from the run's own step generator;
    - ``compute(model, x0, noise, **drawn) -> loss``: a pure function of the model and tensors, vmappable.

    Called as ``loss(model, x0, noise, generator, step, labels)`` it is the engine's ``loss_fn``. ``name`` is
    recorded in the run's folder: a run is never resumed with another loss."""

    def __init__(self, draw, compute, name: str):
        self.draw, self.compute, self.name = draw, compute, name

    def __call__(self, model, x0, noise, generator, step, labels=None):
        return self.compute(model, x0, noise, **self.draw(x0, generator, step, labels))


def make_denoising_loss(objective: str, num_train_timesteps: int, alphas_cumprod: torch.Tensor | None,
                        label_dropout: float = 0.0, null_label: int = 0) -> SplitLoss:
    """The engine's default ``loss_fn(model, x0, noise, generator, step, labels)``: t drawn from the step's
    generator (uniform integers in [0, T) for diffusion, uniform [0, 1] for flow), then ``denoising_loss``. With
    labels, a share ``label_dropout`` of them (drawn from the same generator, after t) becomes ``null_label``."""
    def draw(x0, generator, step, labels=None) -> dict:
        drawn = {"t": sample_t(objective, x0.shape[0], num_train_timesteps, generator, x0.device)}
        if labels is not None:
            drawn["class_labels"] = (drop_labels(labels, label_dropout, null_label, generator)
                                     if label_dropout > 0 else labels)
        return drawn

    def compute(model, x0, noise, t, **kwargs):
        return denoising_loss(model, x0, noise, t, objective, alphas_cumprod, num_train_timesteps, **kwargs)
    return SplitLoss(draw, compute, "denoising")


def loss_name(loss_fn) -> str:
    """The name a run records for its loss: a ``SplitLoss``'s ``name``, else the function's qualified name."""
    return getattr(loss_fn, "name", None) or f"{loss_fn.__module__}.{loss_fn.__qualname__}"

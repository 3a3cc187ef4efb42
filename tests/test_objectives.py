"""Every objective builds x_t and its target from the same (assigned) noise."""
import pytest
import torch

from immiscible.noise.assignment import assign_noise
from immiscible.diffusion.objectives import OBJECTIVES, predict_x0, sample_t, training_pair
from diffusers import DDPMScheduler

ALPHAS_CUMPROD = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02).alphas_cumprod


def _batch():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(16, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(16, 3, 8, 8, generator=g)
    assigned = assign_noise(x0, noise)
    assert not torch.equal(assigned, noise), "the test needs a batch where the assignment permutes the noise"
    return x0, noise, assigned


def _times(objective, n):
    if objective == "flow":
        return torch.linspace(0.05, 0.95, n)
    return torch.linspace(10, 990, n).long()


def _noise_from_x_t(objective, x0, x_t, t):
    if objective == "flow":
        s = t.view(-1, 1, 1, 1)
        return (x_t - (1 - s) * x0) / s
    ab = ALPHAS_CUMPROD[t].view(-1, 1, 1, 1)
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


def _noise_from_target(objective, x0, target, t):
    if objective == "eps":
        return target
    if objective == "flow":
        return target + x0
    ab = ALPHAS_CUMPROD[t].view(-1, 1, 1, 1)
    return (target + (1 - ab).sqrt() * x0) / ab.sqrt()  # v


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_x_t_and_target_use_the_assigned_noise(objective):
    x0, noise, assigned = _batch()
    t = _times(objective, len(x0))
    x_t, target = training_pair(objective, x0, assigned, t, ALPHAS_CUMPROD)
    from_x_t = _noise_from_x_t(objective, x0, x_t, t)
    torch.testing.assert_close(from_x_t, assigned, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(from_x_t, noise, atol=1e-2)
    if objective == "x0":
        torch.testing.assert_close(target, x0)
    else:
        from_target = _noise_from_target(objective, x0, target, t)
        torch.testing.assert_close(from_target, assigned, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(from_target, noise, atol=1e-2)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_predict_x0_inverts_a_perfect_prediction(objective):
    x0, _, assigned = _batch()
    t = _times(objective, len(x0))
    x_t, target = training_pair(objective, x0, assigned, t, ALPHAS_CUMPROD)
    torch.testing.assert_close(predict_x0(objective, target, x_t, t, ALPHAS_CUMPROD), x0, atol=1e-3, rtol=1e-3)


def test_sample_t_ranges():
    g = torch.Generator().manual_seed(0)
    t = sample_t("eps", 1000, 1000, g)
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < 1000
    s = sample_t("flow", 1000, 1000, g)
    assert s.is_floating_point() and 0 <= s.min() and s.max() <= 1


def test_unknown_objective_names_allowed_values():
    x0, noise, _ = _batch()
    with pytest.raises(ValueError, match=r"'score'.*eps.*v.*x0.*flow"):
        training_pair("score", x0, noise, torch.zeros(16, dtype=torch.long), ALPHAS_CUMPROD)

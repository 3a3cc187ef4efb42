"""The README's "own training loop" block runs as written, and the noise it trains on is the assigned noise in both
x_t and the target."""
import re
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def readme_loop() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- readme-loop -->\n```python\n(.*?)```", text, re.S)
    assert match, "the README lost its runnable training-loop block"
    return match.group(1)


def test_the_readme_loop_runs_and_trains_on_the_assigned_noise(monkeypatch):
    import immiscible
    seen = []
    real_assign, real_mse = immiscible.assign_noise_distributed, F.mse_loss

    def assign(x0, noise, *args, **kwargs):
        out = real_assign(x0, noise, *args, **kwargs)
        seen.append(("assigned", x0.clone(), noise.clone(), out.clone()))
        return out

    def mse(prediction, target, *args, **kwargs):
        seen.append(("target", target.clone()))
        return real_mse(prediction, target, *args, **kwargs)

    monkeypatch.setattr(immiscible, "assign_noise_distributed", assign)
    monkeypatch.setattr(F, "mse_loss", mse)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(readme_loop(), "README.md", "exec"), namespace)
    assigned = [s for s in seen if s[0] == "assigned"]
    targets = [s[1] for s in seen if s[0] == "target"]
    assert len(assigned) == len(targets) == 3
    for (_, x0, drawn, out), target in zip(assigned, targets):
        assert torch.equal(target, out)                     # the target is the assigned noise
        assert not torch.equal(out, drawn)                  # which is a real re-pairing of the draw
        assert sorted(out.flatten(1).sum(1).tolist()) == sorted(drawn.flatten(1).sum(1).tolist())  # a permutation
        d_out = (out - x0).flatten(1).norm(dim=1).sum()
        d_drawn = (drawn - x0).flatten(1).norm(dim=1).sum()
        assert d_out <= d_drawn                             # and a closer one
    assert all(p.grad is None for p in namespace["model"].parameters())  # the loop stepped and zeroed

"""The slides' last-step figure, made informative: "at the last diffusion step, vanilla's prediction is trivial,
immiscible's denoises clearly". For an eps-prediction model the x0-prediction at t=T-1 divides the eps error by
sqrt(alpha_bar_T) = 0.006, so both models' predictions are clipped noise and the picture shows nothing either way
(the unconditional experiment's `last_step` table). Here the same comparison uses the ablation's flow-matching runs
(arm ``flow``: the unconditional setting with the rectified-flow objective), whose x0-prediction ``x_t - t v`` is
well-conditioned at every t, up to t = 1 where x_t is the noise itself: vanilla vs exact, the distance of the
prediction to the truth (assigned and random noise), and the dataset mean image's distance for reference. No training
of its own: it reads the runs of ``train_ablation@<arm>-<variant>-<seed>``.

    python -m immiscible.experiments.last_step          # DVC stage last_step: results/tables/flow_last_step.csv
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import pandas as pd

from immiscible.config import from_dict, group_profile, load_profile, to_dict
from immiscible.experiments import ablation as A, experiment as E, unconditional as U

GROUP = "last_step"


def setup(profile: str | None = None, params: str = "params.yaml", data_dir: str = "data",
          ablation_dir: str = "checkpoints/ablation", checkpoint_dir: str = "checkpoints/last_step",
          output_dir: str = "results", dataset: str | None = None) -> E.Experiment:
    """The comparison of params.yaml's ``last_step`` group: its ``variants`` of the ablation arm ``arm`` (all the
    ablation's seeds), at the ablation's profile; predictions go to ``checkpoint_dir``, the table and figure to
    ``output_dir`` as ``<arm>_last_step``."""
    profile = group_profile(params, A.GROUP, profile)   # the ablation's profile: its runs are compared
    group, p = load_profile(params, GROUP, profile)
    arm_name, variants = group.get("arm", "flow"), tuple(group.get("variants", ("vanilla", "exact")))
    ab = A.setup(profile, params=params, dataset=dataset, data_dir=data_dir, checkpoint_dir=ablation_dir)
    if arm_name not in ab.arms:
        raise ValueError(f"{GROUP}.arm {arm_name!r} is not an arm with runs in params.yaml ablation; arms: "
                         f"{sorted(ab.arms)}")
    arm = ab.arms[arm_name]
    runs = tuple(f"{arm_name}-{v}" for v in variants)
    missing = [r for r in runs if r not in arm.methods]
    if missing or "vanilla" not in variants:
        raise ValueError(f"{GROUP}.variants {list(variants)}: need vanilla and runs of ablation.runs; "
                         f"{missing or 'vanilla'} missing (arm {arm_name!r} has {list(arm.methods)})")
    if arm.train.objective not in ("v", "x0", "flow"):
        raise ValueError(f"{GROUP}.arm {arm_name!r}: objective {arm.train.objective!r}; the last-step comparison "
                         "needs a well-conditioned x0-prediction (v, x0 or flow)")
    eval_cfg = from_dict(E.EvalConfig, {**to_dict(arm.eval), **(p.get("eval") or {})})
    return replace(arm, methods=runs, eval=eval_cfg, checkpoint_dir=str(checkpoint_dir), output_dir=str(output_dir),
                   name=arm_name)


def evaluate(exp: E.Experiment) -> pd.DataFrame:
    """The last-step table (and the predictions the figure shows) of the runs' final models."""
    exp.eval_dir.mkdir(parents=True, exist_ok=True)
    return U.last_step(exp)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Last-step predictions of the ablation's flow-matching runs, vanilla vs "
                                            "exact.")
    p.add_argument("--profile", default=None, help=f"default: params.yaml {A.GROUP}.profile")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--ablation-dir", default="checkpoints/ablation")
    p.add_argument("--checkpoint-dir", default="checkpoints/last_step")
    p.add_argument("--output-dir", default="results")
    a = p.parse_args(argv)
    profile = group_profile(a.params, A.GROUP, a.profile)
    exp = setup(profile, params=a.params, data_dir=a.data_dir, ablation_dir=a.ablation_dir,
                checkpoint_dir=a.checkpoint_dir, output_dir=a.output_dir)
    print(U.summarize_last_step(evaluate(exp)).round(3).to_string())


if __name__ == "__main__":
    main()

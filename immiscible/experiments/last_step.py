"""The slides' last-step figure, made informative: "at the last diffusion step, vanilla's prediction is trivial,
immiscible's denoises clearly". For an eps-prediction model the x0-prediction at t=T-1 divides the eps error by
sqrt(alpha_bar_T) = 0.006, so both models' predictions are clipped noise and the picture shows nothing either way
(the unconditional experiment's `last_step` table). Here the same comparison uses models trained with the v objective,
whose x0-prediction is well-conditioned at every t: vanilla vs exact, the distance of the prediction to the truth
(assigned and random noise), and the dataset mean image's distance for reference.

    python -m immiscible.engine --group v_objective --profile cpu --method exact --seed 0 --output-dir ...
    python -m immiscible.experiments.last_step          # DVC stage last_step: results/tables/v_objective_last_step.csv
"""
from __future__ import annotations

import argparse

import pandas as pd

from immiscible.config import load_yaml_group
from immiscible.experiments import unconditional as U

GROUP = "v_objective"


def setup(profile: str = "smoke", params: str = "params.yaml", checkpoint_dir: str = "checkpoints/v_objective",
          **kwargs) -> U.Experiment:
    """The runs of params.yaml's ``v_objective`` group (arguments as ``unconditional.setup``)."""
    exp = U.setup(profile, params=params, checkpoint_dir=checkpoint_dir, group_name=GROUP, **kwargs)
    if exp.train.objective not in ("v", "x0", "flow"):
        raise ValueError(f"profile {profile!r} of {GROUP}: objective {exp.train.objective!r}; the last-step "
                         "comparison needs a well-conditioned x0-prediction (v, x0 or flow)")
    return exp


def evaluate(exp: U.Experiment) -> pd.DataFrame:
    """The last-step table (and the predictions the figure shows) of the group's final models."""
    exp.eval_dir.mkdir(parents=True, exist_ok=True)
    return U.last_step(exp)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Last-step predictions of v-objective models, vanilla vs exact.")
    p.add_argument("--profile", default=None, help=f"default: params.yaml {GROUP}.profile")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--checkpoint-dir", default="checkpoints/v_objective")
    p.add_argument("--output-dir", default="results")
    a = p.parse_args(argv)
    profile = a.profile or load_yaml_group(a.params, GROUP).get("profile", "cpu")
    exp = setup(profile, params=a.params, data_dir=a.data_dir, checkpoint_dir=a.checkpoint_dir,
                output_dir=a.output_dir)
    print(U.summarize_last_step(evaluate(exp)).round(3).to_string())


if __name__ == "__main__":
    main()

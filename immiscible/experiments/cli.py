"""The command line every training experiment shares (what its DVC classifier and evaluate stages run):

    python -m immiscible.experiments.<experiment> classifier | evaluate | <its own commands> [--profile ...]
"""
from __future__ import annotations

import argparse
import json

from immiscible.config import group_profile
from immiscible.engine.loop import end_distributed
from immiscible.evaluation.features import train_classifier


def print_tables(tables: dict) -> None:
    """The paired differences and the efficiency summary of an evaluation, as the stage's log."""
    print(tables["paired"].to_string())
    print(tables["efficiency"].T.to_string())


def standard_commands(evaluate_all, train_all=None) -> dict:
    """An experiment's ``evaluate`` command (every table from the trained runs) and, given ``train_all``, its
    ``train`` command (every run in this process), for ``experiment_main``."""
    def evaluate(exp):
        """every table from the trained runs"""
        print_tables(evaluate_all(exp))

    def train(exp):
        """every run of the experiment in this process"""
        print(train_all(exp, on_change="restart").to_string())
    return {"evaluate": evaluate} if train_all is None else {"train": train, "evaluate": evaluate}


def experiment_main(argv, group: str, setup, commands: dict, description: str, checkpoint_dir: str,
                    classifier_dir: str) -> None:
    """Parse ``argv``, resolve the experiment of params.yaml's ``group`` with ``setup`` and run the command:
    ``classifier`` (train and cache its proxy feature extractor) or one of ``commands`` ({name: fn(experiment)},
    each function's docstring its help)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("command", choices=["classifier", *commands],
                   help="; ".join(["classifier: train/cache the proxy feature extractor"] +
                                  [f"{name}: {(fn.__doc__ or '').strip()}" for name, fn in commands.items()]))
    p.add_argument("--profile", default=None, help=f"default: params.yaml {group}.profile")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--checkpoint-dir", default=checkpoint_dir)
    p.add_argument("--classifier-dir", default=classifier_dir)
    p.add_argument("--output-dir", default="results")
    a = p.parse_args(argv)
    profile = group_profile(a.params, group, a.profile)
    exp = setup(profile, data_dir=a.data_dir, params=a.params, checkpoint_dir=a.checkpoint_dir,
                output_dir=a.output_dir, classifier_root=a.classifier_dir)
    if a.command == "classifier":
        print(json.dumps(train_classifier(exp.classifier), indent=2))
    else:
        commands[a.command](exp)
    end_distributed()

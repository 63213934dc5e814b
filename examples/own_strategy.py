"""Bring your own compression rule: submodels that train the weakest channels first.

`WeakestFirst` is the opposite of magnitude pruning: it keeps the channels whose filters have
the *smallest* L1 norm in the current global model (the ones the big devices neglect), with a
share `explore` of the kept channels drawn at random per device and round. It is an ordinary
`Strategy` subclass with its own parameters (`Params`), stateless (a plan depends only on its
arguments, so runs stay deterministic and resumable), runnable from Python or by import path:

    python examples/own_strategy.py --tiny
    PYTHONPATH=examples raysim run scenarios/quickstart.yaml \
        --set compression.strategy=own_strategy:WeakestFirst --set 'compression.params={explore: 0.25}'
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

import raysim
from raysim.api import Strategy, SubmodelPlan, channel_l1, rate_sizes, rng


class WeakestFirst(Strategy):
    """Keep the channels of smallest filter norm; `explore` of them drawn at random instead."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        explore: float = Field(0.25, ge=0.0, le=1.0, description="share of kept channels drawn at random")

    per_device = True  # the random part differs per device

    def __init__(self, explore: float = 0.25) -> None:
        self.explore = explore

    def plan(self, spec, rate, round_idx, device_id, global_params: Mapping[str, torch.Tensor], seed):
        scores = channel_l1(spec, global_params)
        gen = rng(seed, "weakest-first", round_idx, device_id)
        keep = {}
        for g in sorted(spec.groups):  # sorted: the draws must not depend on dict order
            w = spec.groups[g]
            k = rate_sizes(w, rate)
            n_rand = int(round(self.explore * k))
            weakest = np.argsort(scores[g], kind="stable")[: k - n_rand]
            rest = np.setdiff1d(np.arange(w), weakest)
            extra = gen.choice(rest, size=n_rand, replace=False) if n_rand else np.zeros(0, np.int64)
            keep[g] = np.sort(np.concatenate([weakest, extra]).astype(np.int64))
        return SubmodelPlan(rate, keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a few small rounds")
    ap.add_argument("--out", default="runs", help="parent directory of the run directory")
    args = ap.parse_args()
    tiny = ["rounds=3", "fleet.devices=60", "selection.per_round=8", "data.synthetic.samples=1500",
            "model.widths=[8,16]", "model.hidden=16", "output.plots=false"] if args.tiny else ["rounds=20"]
    run = raysim.simulate(Path(__file__).resolve().parents[1] / "scenarios" / "quickstart.yaml",
                          strategy=WeakestFirst(explore=0.25), out=args.out,
                          overrides=["name=weakest-first", *tiny], progress=not args.tiny)
    trained = run.clients[run.clients["status"] == "ok"]
    print(f"run {run.path}")
    print(f"final accuracy {100 * run.rounds['accuracy'].iloc[-1]:.1f}%")
    print("devices trained per rate:", trained.groupby("rate").size().to_dict())


if __name__ == "__main__":
    main()

"""FedProx on the devices, and a server optimizer of your own: FedAvg with a clipped, decaying step.

`FedProx` is raysim's built-in client algorithm (local SGD plus (mu/2)||w - w_global||^2,
Li et al. 2020). `ClippedDecay` is written here: it clips the aggregated update's norm per
tensor and decays the server learning rate by step, keeping its step count in the explicit
server state (checkpointed with the model, so a resumed run continues the schedule).

    python examples/fedprox_own_server.py --tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

import raysim
from raysim.api import FedProx, ServerOptimizer


class ClippedDecay(ServerOptimizer):
    """x += lr * decay^step * clip(delta, max_norm) on the elements somebody held."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        lr: float = Field(1.0, gt=0.0)
        decay: float = Field(0.98, gt=0.0, le=1.0)
        max_norm: float = Field(5.0, gt=0.0)

    def __init__(self, lr: float = 1.0, decay: float = 0.98, max_norm: float = 5.0) -> None:
        self.lr, self.decay, self.max_norm = lr, decay, max_norm

    def step(self, params, delta, held, state):
        lr = self.lr * self.decay ** state.steps  # state.steps: server steps taken so far
        for k, p in params.items():
            d, h = delta[k], held[k]
            norm = float(d[h].norm()) if h.any() else 0.0
            scale = min(1.0, self.max_norm / norm) if norm > 0 else 1.0
            p[h] += lr * scale * d[h]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a few small rounds")
    ap.add_argument("--mu", type=float, default=0.01, help="FedProx's proximal weight")
    ap.add_argument("--out", default="runs", help="parent directory of the run directory")
    args = ap.parse_args()
    tiny = ["rounds=3", "fleet.devices=60", "selection.per_round=8", "data.synthetic.samples=1500",
            "model.widths=[8,16]", "model.hidden=16", "output.plots=false"] if args.tiny else ["rounds=20"]
    run = raysim.simulate(Path(__file__).resolve().parents[1] / "scenarios" / "quickstart.yaml",
                          client=FedProx(lr=0.05, mu=args.mu),
                          server=ClippedDecay(decay=0.95), out=args.out,
                          overrides=["name=fedprox-clipped", "deadline.policy=partial", *tiny],
                          progress=not args.tiny)
    print(f"run {run.path}")
    print(f"final accuracy {100 * run.rounds['accuracy'].iloc[-1]:.1f}%")
    print("statuses:", run.clients["status"].value_counts().to_dict())
    print("components:", run.manifest["info"]["components"])


if __name__ == "__main__":
    main()

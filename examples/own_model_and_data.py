"""Bring your own model and data: a plain torch 1-D CNN on multichannel vibration signals.

Nothing here knows about submodels: raysim traces the model and cuts the narrower submodels
the fleet's microcontrollers can train by itself. The data is a numpy function of the seed;
`groups` (one machine per sample) lets each device hold one machine's recordings.

    python examples/own_model_and_data.py            # a few minutes on 2 cores
    python examples/own_model_and_data.py --tiny     # seconds (what the tests run)
"""

from __future__ import annotations

import argparse

import numpy as np
from torch import nn

import raysim


class VibrationNet(nn.Module):
    """Conv1d stages, batch norm, a residual add, global average pooling, a linear head."""

    def __init__(self, channels: int, classes: int, width: int = 24) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(channels, width, 7, padding=3), nn.BatchNorm1d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv1d(width, width, 3, padding=1), nn.BatchNorm1d(width), nn.ReLU(),
                                   nn.Conv1d(width, width, 3, padding=1), nn.BatchNorm1d(width))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.stem(x)
        h = nn.functional.relu(h + self.block(h))
        return self.head(h.mean(dim=-1))


def vibration_net(input_shape, num_classes):
    """The model factory raysim calls: (input_shape, num_classes) -> nn.Module."""
    return VibrationNet(input_shape[0], num_classes)


def vibration(seed: int, n: int = 6000, machines: int = 200, steps: int = 128):
    """3-axis vibration windows of rotating machines: healthy, imbalance, misalignment, bearing wear.

    Each fault adds its own harmonics of the shaft frequency; each machine has its own speed
    and sensor gain (the non-IID part).
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    g = rng.integers(0, machines, n)
    speed = rng.uniform(0.8, 1.2, machines)[g][:, None]
    gain = rng.uniform(0.7, 1.3, (machines, 3))[g][:, :, None]
    t = np.arange(steps)[None, :] / steps
    base = np.sin(2 * np.pi * 4 * speed * t)
    x = np.empty((n, 3, steps), np.float32)
    for c, (h, amp) in enumerate([(1, 0.0), (1, 0.8), (2, 0.8), (7.3, 0.6)]):
        m = y == c
        fault = amp * np.sin(2 * np.pi * 4 * h * speed[m] * t + rng.uniform(0, 6.3, (m.sum(), 1)))
        x[m] = (base[m][:, None, :] + fault[:, None, :]) * gain[m]
    x += rng.normal(0, 0.5, x.shape).astype(np.float32)
    cut = int(0.85 * n)
    return x[:cut], y[:cut], x[cut:], y[cut:], g[:cut]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a few small rounds")
    ap.add_argument("--out", default="runs", help="parent directory of the run directory")
    args = ap.parse_args()
    scenario = {
        "name": "vibration", "rounds": 3 if args.tiny else 25,
        "fleet": {"devices": 60 if args.tiny else 200},
        "selection": {"per_round": 8 if args.tiny else 30, "overcommit": 0.2},
        "data": {"partition": {"kind": "natural"}},
        "model": {"rates": [1.0, 0.5, 0.25, 0.125]},
        "compression": {"strategy": "rolling"},
        "output": {"plots": not args.tiny},
    }
    data = (lambda seed: vibration(seed, n=1200, machines=60)) if args.tiny else vibration
    run = raysim.simulate(scenario, model=vibration_net, dataset=data, out=args.out, progress=not args.tiny)
    trained = run.clients[run.clients["status"] == "ok"]
    print(f"run {run.path}")
    print(f"final accuracy {100 * run.rounds['accuracy'].iloc[-1]:.1f}% (chance 25%)")
    print("devices trained per rate:", trained.groupby("rate").size().to_dict())


if __name__ == "__main__":
    main()

"""Evaluation of the global model: accuracy and loss on the test set, and of each rate's
submodel; and when a round evaluates.

    evaluate = Evaluator(setup, cfg, strategy)
    if evaluate.due(r):
        records = evaluate(r, params, clock)
"""

from __future__ import annotations

import numpy as np
import torch

from raysim.client.evaluate import evaluate, load_params
from raysim.engine.setup import RoundConfig, Setup
from raysim.models.calibrate import calibration_sample, recompute_bn_stats
from raysim.records import EvalRecord
from raysim.submodel import extract, plan_indices
from raysim.submodel.strategies import Strategy

__all__ = ["Evaluator"]


class Evaluator:
    """The test set (on the evaluation device) and how to score a model on it."""

    def __init__(self, setup: Setup, cfg: RoundConfig, strategy: Strategy) -> None:
        self.setup, self.cfg, self.strategy = setup, cfg, strategy
        ds = setup.dataset
        n_eval = len(ds.y_test) if cfg.eval_max_samples is None else min(cfg.eval_max_samples, len(ds.y_test))
        # A GPU run evaluates on the GPU when this process has one (the test set moves there once).
        self.eval_device = torch.device("cuda" if cfg.device == "cuda" and torch.cuda.is_available() else "cpu")
        if self.eval_device.type == "cuda":
            from raysim.hosts.cuda import EVAL_GPU_SHARE, cuda_host  # noqa: PLC0415

            cuda_host(EVAL_GPU_SHARE, owner=self)
        self.x_test = torch.from_numpy(np.array(ds.x_test[:n_eval], copy=True)).to(self.eval_device)
        self.y_test = torch.from_numpy(np.array(ds.y_test[:n_eval], copy=True)).to(self.eval_device)

    def due(self, r: int) -> bool:
        """Whether round r evaluates: every `eval_every` rounds, and the last."""
        return r % self.cfg.eval_every == 0 or r == self.cfg.rounds

    def __call__(self, r: int, params: dict[str, torch.Tensor], clock: float) -> list[EvalRecord]:
        """Accuracy of the global model and (optionally) of each rate's submodel (the strategy's
        `eval_plan`). Static batch norm gets statistics recomputed on a fixed training sample."""
        cfg = self.cfg
        out = []
        dev = self.eval_device
        shapes = {k: tuple(v.shape) for k, v in params.items()}
        calib = calibration_sample(self.setup.dataset.x_train, cfg.seed).to(dev)
        model = self.setup.spec.build().to(dev)
        load_params(model, {k: v.to(dev) for k, v in params.items()})
        recompute_bn_stats(model, calib)
        acc, loss = evaluate(model, self.x_test, self.y_test, cfg.eval_batch_size)
        out.append(EvalRecord(r, "global", 1.0, acc, loss, clock))
        if cfg.eval_per_rate:
            for rt in self.setup.rates:
                if rt >= 1.0:
                    continue
                plan = self.strategy.eval_plan(self.setup.spec, rt, params)
                sub = self.setup.spec.build(plan.sizes(), rt).to(dev)
                load_params(sub, {k: v.to(dev) for k, v in
                                  extract(params, plan_indices(self.setup.spec, plan, shapes)).items()})
                recompute_bn_stats(sub, calib)
                a, lo = evaluate(sub, self.x_test, self.y_test, cfg.eval_batch_size)
                out.append(EvalRecord(r, f"rate-{rt:g}", rt, a, lo, clock))
        return out

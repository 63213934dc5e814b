"""Small scenarios shared by the tests."""


def tiny_overrides(**extra):
    """A scenario small enough for a test: 60 devices, 8 per round, 3 rounds."""
    base = {
        "name": "tiny", "rounds": 3, "fleet.devices": 60, "selection.per_round": 8,
        "data.synthetic.samples": 1200, "model.widths": "[8,16]", "model.hidden": 16,
        "eval.every": 1, "output.checkpoint_every": 1, "runtime.num_cpus": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]

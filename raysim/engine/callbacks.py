"""Callbacks: code of the user's that runs beside the round loop, in the driver process.

    class PrintAccuracy(Callback):
        def on_round(self, out):
            print(out.record.round, out.record.accuracy)

    raysim.simulate("scenarios/quickstart.yaml", callbacks=[PrintAccuracy()])

A callback sees every round's records as they are written (the run directory holds them too);
an exception in a callback stops the run, which is then marked failed and stays resumable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raysim.records import RoundOutput


class Callback:
    """Hooks of a run; override the ones you need."""

    def on_start(self, run_dir: Path, info: dict[str, Any]) -> None:
        """The run directory exists and the coordinator is up (`info`: model, rates, hosts...)."""

    def on_round(self, out: RoundOutput) -> None:
        """A round finished; `out` holds its round, client and eval records."""

    def on_end(self, run_dir: Path, status: str) -> None:
        """The run ended: `complete`, `stopped`, `interrupted` or `failed`."""

"""The one error automatic slicing raises."""

from __future__ import annotations


class SlicingError(ValueError):
    """A model cannot be sliced into submodels; the message is one line naming the module and
    the op, and the way out (train the whole model)."""

    def __init__(self, path: str, op: str, reason: str) -> None:
        self.path = path
        self.op = op
        self.reason = reason
        where = path or "(root)"
        super().__init__(f"model: cannot slice: module '{where}' calls {op} ({reason}); "
                         "use compression.strategy: full")

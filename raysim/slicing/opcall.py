"""What an op rule sees and returns: the layouts of an op's arguments and of its result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from torch import fx

from raysim.slicing.analysis import Analysis
from raysim.slicing.layout import Layout


class Other:
    """A value that is not a tensor: a size, a shape, a Python number."""


OTHER = Other()


class Parts(Other):
    """The tuple a split returns: one layout per piece (only indexing and `cat` read it)."""

    def __init__(self, layouts: tuple[Layout, ...]) -> None:
        self.layouts = layouts

Value = Union[Layout, Other]
ValueOf = Callable[[Any], Value]


@dataclass(frozen=True)
class OpCall:
    """One call of an op, as a rule sees it."""

    node: fx.Node
    value: ValueOf                        # layout (or OTHER) of any argument
    out_shape: Optional[tuple[int, ...]]  # None when the op returns no tensor

    def tensors(self) -> list[Layout]:
        return [v for v in (self.value(a) for a in self.node.args) if not isinstance(v, Other)]

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        if len(self.node.args) > i:
            return self.node.args[i]
        return self.node.kwargs.get(name, default)

    def tensor(self, i: int, name: str) -> Optional[Layout]:
        """The layout of a tensor argument, or None when it is absent or not a tensor."""
        v = self.value(self.arg(i, name))
        return None if isinstance(v, Other) else v

    def position(self, i: int, name: str) -> "int | str":
        """Where argument `i` (keyword `name`) sits in this call: its index or its keyword."""
        return i if len(self.node.args) > i else name


OpRule = Callable[[Analysis, OpCall], Value]


class Unsupported(Exception):
    """An op's arguments are outside what its rule handles; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def first_tensor(call: OpCall) -> Layout:
    ts = call.tensors()
    if not ts:
        raise Unsupported("no tensor input")
    return ts[0]


def norm_dim(d: int, n: int) -> int:
    """A dimension index counted from the front."""
    return d + n if d < 0 else d

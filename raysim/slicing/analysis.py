"""What the analysis of a traced model records (layouts of parameters, how each leaf layer's
widths follow the groups, which reshapes and splits carry literal widths), and the contract of
a layer rule that records them."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from raysim.slicing.layout import Atoms, Dim, Layout


@dataclass(frozen=True)
class BuildOptions:
    """How the builder treats layers whose behaviour is a choice (see the module docstring),
    and the rate of the submodel being built (for its scalers)."""

    static_bn: bool = True
    scaler: bool = True
    rate: float = 1.0


class LayerRule(ABC):
    """How one kind of leaf layer is analysed and narrowed."""

    @abstractmethod
    def propagate(self, ctx: Analysis, path: str, m: nn.Module, x: Layout,
                  out_shape: tuple[int, ...]) -> Layout:
        """The output layout; records parameters and the layer's width dimensions."""

    def rebuild(self, m: nn.Module, widths: tuple[int, ...], opts: BuildOptions) -> nn.Module:
        """A fresh layer at `widths` (parameter-free layers are copied)."""
        return copy.deepcopy(m)

    def resize(self, m: nn.Module, widths: tuple[int, ...], opts: BuildOptions) -> None:  # noqa: B027 - optional
        """Narrow `m`, a materialised copy of a subclass of this rule's layer, in place to
        `widths`: its width attributes and fresh tensors (then `Subclass` re-initialises them
        with the layer's own `reset_parameters`)."""


@dataclass
class LayerUse:
    """A leaf layer: its rule and the dimensions its constructor widths follow (rule order)."""

    rule: LayerRule
    dims: tuple[Dim, ...]
    # The (input, output) channel dimensions of a conv or linear, for the scaler rule.
    io: Optional[tuple[Dim, Dim]] = None


@dataclass
class ReshapeUse:
    """A view/reshape node whose target shape is literal: the output dimension of each
    shape argument, so the builder can write the submodel's width into literal ones."""

    out: Layout
    # Per target position: whether its size is computed from the batch size (kept as is).
    batch: tuple[bool, ...] = ()


@dataclass
class SplitUse:
    """A split node of a dimension that shrinks: each piece's layout, so the builder can write
    the submodel's piece widths into its literal sizes."""

    pieces: tuple[Dim, ...]


@dataclass
class LiteralUse:
    """A number (or tuple of numbers) written into a node's arguments that follows channel
    widths: `kind` "width" is the width of `dims[0]`, "shape" the widths of `dims`, "groups" a
    GroupNorm group count narrowed with `dims[0]` (see `narrowed_num_groups`). `at` is the
    argument's position or keyword."""

    at: "int | str"
    kind: str
    dims: tuple[Dim, ...]
    value: object


@dataclass
class Analysis:
    """Everything the walk over the graph learns, before groups are named."""

    atoms: Atoms = field(default_factory=Atoms)
    params: dict[str, Layout] = field(default_factory=dict)
    buffers: dict[str, Layout] = field(default_factory=dict)
    layers: dict[str, LayerUse] = field(default_factory=dict)
    reshapes: dict[str, ReshapeUse] = field(default_factory=dict)
    splits: dict[str, SplitUse] = field(default_factory=dict)
    literals: dict[str, list[LiteralUse]] = field(default_factory=dict)

    def literal(self, node: str, at: "int | str", kind: str, dims: tuple[Dim, ...], value: object) -> None:
        """Record a literal argument the builder rewrites (see `LiteralUse`)."""
        self.literals.setdefault(node, []).append(LiteralUse(at, kind, dims, value))

    def param(self, name: str, layout: Layout) -> None:
        """Record a parameter's layout; a parameter met twice (a shared layer) keeps one."""
        old = self.params.get(name)
        if old is None:
            self.params[name] = layout
            return
        for a, b in zip(old, layout):
            self.atoms.unify(a, b)

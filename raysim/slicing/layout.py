"""Which channels each tensor dimension carries, while a traced model is analysed.

Every output channel a layer creates (a conv's or a linear's outputs) is an *atom*; atoms that
must keep the same indices (the two operands of a residual add, a norm and the conv it
follows) are merged in a union-find. A tensor dimension is a `Dim`: segments side by side,
each an atom whose channels own `block` consecutive entries (a flatten) or a fixed run that
never shrinks (input features, classifier outputs). An atom can be *pinned*: kept whole in
every submodel, which is how the analysis stays correct where it cannot slice consistently
(a grouped convolution, two layouts that do not line up, the model's outputs).

After the analysis every unpinned class of atoms that some layer created is one channel
group of the `ModelSpec`; `Atoms.axis` turns a `Dim` into the spec's axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from raysim.models.span import Axis, Block, Fixed, Part, Span


@dataclass(frozen=True)
class Seg:
    """`width` channels of `atom` (or `width` fixed entries when `atom` is None), each
    channel owning `block` consecutive entries."""

    atom: Optional[int]
    width: int
    block: int = 1

    @property
    def size(self) -> int:
        return self.width * self.block


Dim = tuple[Seg, ...]
Layout = tuple[Dim, ...]


def fixed(n: int) -> Dim:
    """A dimension of `n` entries that never shrinks."""
    return (Seg(None, int(n)),)


def dim_size(dim: Dim) -> int:
    """Entries of a dimension in the global model."""
    return sum(s.size for s in dim)


def fixed_layout(shape: tuple[int, ...]) -> Layout:
    """A tensor none of whose dimensions shrink."""
    return tuple(fixed(n) for n in shape)


class Atoms:
    """Union-find over atoms, with pinning and the origin (module path) of each atom."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._width: list[int] = []
        self._pinned: list[bool] = []
        self._made_by_layer: list[bool] = []
        self.origin: list[str] = []
        self.names: dict[int, str] = {}

    # ------------------------------------------------------------------ union-find
    def new(self, width: int, origin: str, layer: bool = True) -> int:
        """A fresh atom of `width` channels; `layer` is False for a parameter dimension that
        only takes a group from what it meets (it never makes a group of its own)."""
        self._parent.append(len(self._parent))
        self._width.append(int(width))
        self._pinned.append(False)
        self._made_by_layer.append(layer)
        self.origin.append(origin)
        return len(self._parent) - 1

    def find(self, a: int) -> int:
        while self._parent[a] != a:
            self._parent[a] = self._parent[self._parent[a]]
            a = self._parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._width[ra] != self._width[rb]:  # a shape error torch would have raised first
            raise AssertionError(f"atoms of widths {self._width[ra]} and {self._width[rb]} merged")
        lo, hi = min(ra, rb), max(ra, rb)  # the oldest atom is the root: names follow graph order
        self._parent[hi] = lo
        self._pinned[lo] = self._pinned[lo] or self._pinned[hi]
        self._made_by_layer[lo] = self._made_by_layer[lo] or self._made_by_layer[hi]

    def pin(self, a: int) -> None:
        self._pinned[self.find(a)] = True

    def pinned(self, a: int) -> bool:
        return self._pinned[self.find(a)]

    def pin_dim(self, dim: Dim) -> None:
        for s in dim:
            if s.atom is not None:
                self.pin(s.atom)

    def pin_layout(self, layout: Layout) -> None:
        for dim in layout:
            self.pin_dim(dim)

    def pin_orphans(self) -> None:
        """Pin classes that no layer created (a parameter's dimension that met no channel)."""
        for a in range(len(self._parent)):
            if not self._made_by_layer[self.find(a)]:
                self.pin(a)

    # ------------------------------------------------------------------ dimensions
    def canonical(self, dim: Dim) -> Dim:
        """The dimension with atoms replaced by their class roots, pinned atoms turned into
        fixed runs, and adjacent fixed runs merged."""
        out: list[Seg] = []
        for s in dim:
            if s.atom is None or self.pinned(s.atom):
                seg = Seg(None, s.size)
                if out and out[-1].atom is None:
                    seg = Seg(None, out[-1].size + seg.size)
                    out.pop()
                out.append(seg)
            else:
                out.append(Seg(self.find(s.atom), s.width, s.block))
        return tuple(out)

    def sliced(self, dim: Dim) -> bool:
        """Whether any part of the dimension shrinks."""
        return any(s.atom is not None for s in self.canonical(dim))

    def plain(self, dim: Dim) -> bool:
        """Whether the dimension is exactly one atom's channels (one entry each)."""
        c = self.canonical(dim)
        return len(c) == 1 and c[0].atom is not None and c[0].block == 1

    def unify(self, a: Dim, b: Dim) -> None:
        """Make two dimensions that meet element by element (a residual add) keep the same
        entries: segment by segment when their layouts line up, else keep both whole."""
        ca, cb = self.canonical(a), self.canonical(b)
        shape_a = [(s.atom is None, s.width, s.block) for s in ca]
        shape_b = [(s.atom is None, s.width, s.block) for s in cb]
        if [(w, k) for _, w, k in shape_a] == [(w, k) for _, w, k in shape_b]:
            for sa, sb in zip(ca, cb):
                if sa.atom is not None and sb.atom is not None:
                    self.union(sa.atom, sb.atom)
                elif sa.atom is not None:
                    self.pin(sa.atom)
                elif sb.atom is not None:
                    self.pin(sb.atom)
            return
        self.pin_dim(a)
        self.pin_dim(b)

    # ------------------------------------------------------------------ the spec's view
    def name_groups(self, given: Optional[dict[int, str]] = None) -> dict[int, str]:
        """A readable, unique name for every unpinned class: `given[root]` where the caller
        names it (those first, in the caller's order), else the path of the module that
        created its oldest atom."""
        given = {self.find(a): n for a, n in (given or {}).items()}
        names: dict[int, str] = dict(given)
        used: set[str] = set(given.values())
        for a in range(len(self._parent)):
            r = self.find(a)
            if r != a or self._pinned[r] or r in names:
                continue
            base = self.origin[r] or "input"
            name, k = base, 1
            while name in used:
                k += 1
                name = f"{base}#{k}"
            used.add(name)
            names[r] = name
        self.names = names
        return names

    def width(self, a: int) -> int:
        return self._width[self.find(a)]

    def axis(self, dim: Dim) -> Axis:
        """The spec's axis of a dimension (after `name_groups`)."""
        c = self.canonical(dim)
        if all(s.atom is None for s in c):
            return None
        if len(c) == 1 and c[0].block == 1:
            return self.names[c[0].atom]  # type: ignore[index]
        parts: list[Part] = [Fixed(s.size) if s.atom is None else Block(self.names[s.atom], s.block) for s in c]
        return Span(tuple(parts))

    def groups_used(self) -> dict[str, int]:
        """Every named group and its width."""
        return {n: self._width[r] for r, n in self.names.items()}

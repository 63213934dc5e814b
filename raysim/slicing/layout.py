"""Which channels each tensor dimension carries, while a traced model is analysed.

Every output channel a layer creates (a conv's or a linear's outputs) is an *atom*; atoms that
must keep the same indices (the two operands of a residual add, a norm and the conv it
follows) are merged in a union-find. A class can be *refined*: cut into consecutive parts,
each a class of its own, when an op splits its channels (`torch.split`, `chunk`); it then
stands for its parts wherever it appears. A tensor dimension is a `Dim`: segments side by side,
each an atom whose channels own `block` consecutive entries (a flatten) or a fixed run that
never shrinks (input features, classifier outputs). An atom can be *pinned*: kept whole in
every submodel, which is how the analysis stays correct where it cannot slice consistently
(a grouped convolution, two layouts that do not line up, the model's outputs).

After the analysis every unpinned class of atoms that some layer created is one channel
group of the `ModelSpec`; `Atoms.axis` turns a `Dim` into the spec's axis.
"""

from __future__ import annotations

import itertools
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
        self._parts: dict[int, list[int]] = {}  # a refined class root -> its parts, in order
        # A coarsened class root -> the atom of its units (whole groups of a grouped conv):
        # the class's channels are then seen as units that each own width/units channels.
        self._coarse: dict[int, int] = {}

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
        ca, cb = self._coarse.pop(lo, None), self._coarse.pop(hi, None)
        if ca is not None and cb is not None:
            if self.width(ca) == self.width(cb):
                self.union(ca, cb)
            else:  # grouped two ways: kept whole
                self.pin(ca)
                self.pin(cb)
                self.pin(lo)
        if ca is not None or cb is not None:
            self._coarse[lo] = ca if ca is not None else cb  # type: ignore[assignment]

    def claim(self, dim: Dim, origin: str) -> None:
        """The channels of `dim` (a weight's output dimension read by a functional conv or
        linear) are created there: they may form a group, named after `origin`."""
        for seg in dim:
            if seg.atom is not None:
                r = self.find(seg.atom)
                if not self._made_by_layer[r]:
                    self._made_by_layer[r] = True
                    self.origin[r] = origin

    def pin(self, a: int) -> None:
        r = self.find(a)
        if self._pinned[r]:
            return
        self._pinned[r] = True
        for c in self._parts.get(r, ()):
            self.pin(c)
        if r in self._coarse:
            self.pin(self._coarse[r])

    def coarsen(self, dim: Dim, units: int, origin: Optional[str] = None) -> bool:
        """See the channels of `dim` (one class, one entry each) as `units` whole groups of
        consecutive channels (a grouped conv's groups); False, and nothing changed, when that
        cannot be expressed (a concatenation, a pinned or refined class, another grouping)."""
        c = self.canonical(dim)
        if len(c) != 1:
            return False
        seg = c[0]
        if seg.atom is None:
            return False
        if seg.width == units:  # already seen as these units
            return True
        r = self.find(seg.atom)
        if seg.block != 1 or r in self._parts or r in self._coarse or self._width[r] % units:
            return False
        self._coarse[r] = self.new(units, origin or self.origin[r], layer=self._made_by_layer[r])
        return True

    def refine(self, a: int, cuts: list[int]) -> None:
        """Cut the class of `a` into parts at channel offsets `cuts` (each part a new class)."""
        r = self.find(a)
        if r in self._parts:
            raise AssertionError("refine: a refined class is refined through its parts")
        edges = [0, *sorted(set(cuts)), self._width[r]]
        self._parts[r] = [self.new(hi - lo, f"{self.origin[r]}:{k}", layer=self._made_by_layer[r])
                          for k, (lo, hi) in enumerate(zip(edges, edges[1:]))]
        if self._pinned[r]:
            self.pin(r)

    def _leaves(self, seg: Seg) -> list[Seg]:
        """A segment of one atom as segments of unrefined, uncoarsened classes."""
        r = self.find(seg.atom)  # type: ignore[arg-type]
        if r in self._coarse:
            units = self.find(self._coarse[r])
            per = self._width[r] // self._width[units]
            return self._leaves(Seg(units, seg.width // per, seg.block * per))
        if r not in self._parts:
            return [Seg(r, seg.width, seg.block)]
        return [s for c in self._parts[r] for s in self._leaves(Seg(c, self._width[c], seg.block))]

    def cut(self, dim: Dim, sizes: list[int]) -> Optional[list[Dim]]:
        """The dimension as consecutive pieces of `sizes` entries, refining every class a cut
        falls inside; None when a cut falls inside one channel's block of entries."""
        ends = list(itertools.accumulate(sizes))
        pos = 0
        for s in self.canonical(dim):
            inside = [e - pos for e in ends if pos < e < pos + s.size]
            if inside and s.atom is not None:
                if any(c % s.block for c in inside):
                    return None
                self.refine(s.atom, [c // s.block for c in inside])
            pos += s.size
        pieces: list[list[Seg]] = [[] for _ in sizes]
        pos, k = 0, 0
        for s in self.canonical(dim):
            if s.atom is not None:  # after refining, it lies inside one piece
                while pos >= ends[k]:
                    k += 1
                pieces[k].append(s)
                pos += s.size
                continue
            left = s.size
            while left:
                while pos >= ends[k]:
                    k += 1
                take = min(left, ends[k] - pos)
                pieces[k].append(Seg(None, take))
                pos, left = pos + take, left - take
        return [tuple(p) for p in pieces]

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
            r = self.find(a)
            if not self._made_by_layer[r] and r not in self._coarse:  # a coarse class is its units
                self.pin(a)

    # ------------------------------------------------------------------ dimensions
    def canonical(self, dim: Dim) -> Dim:
        """The dimension with atoms replaced by their class roots, pinned atoms turned into
        fixed runs, and adjacent fixed runs merged."""
        out: list[Seg] = []
        leaves = [t for s in dim for t in ([s] if s.atom is None or self.pinned(s.atom) else self._leaves(s))]
        for s in leaves:
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
        if len(ca) != len(cb) and self._alignable(ca, cb):
            # A split on one side only (one operand's channels cut by a chunk): cut the other
            # side's classes at the same places, then they meet part by part.
            self.cut(a, [s.size for s in cb])
            self.cut(b, [s.size for s in self.canonical(a)])
            ca, cb = self.canonical(a), self.canonical(b)
        if len(ca) == len(cb) and self._coarsen_to_match(ca, cb):
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

    def _coarsen_to_match(self, ca: Dim, cb: Dim) -> bool:
        """Where two segments of the same size meet, one seen as whole groups and the other
        channel by channel, see the other as the same groups too."""
        changed = False
        for sa, sb in zip(ca, cb):
            if sa.atom is None or sb.atom is None or sa.size != sb.size or sa.block == sb.block:
                continue
            fine, coarse = (sa, sb) if sa.block < sb.block else (sb, sa)
            if fine.block == 1 and self.coarsen((fine,), coarse.width):
                changed = True
        return changed

    def same_units(self, a: Dim, b: Dim) -> bool:
        """Make two coarsened dimensions keep the same units (a grouped conv's input and output
        groups); False when they are not both one class of the same count of units."""
        ca, cb = self.canonical(a), self.canonical(b)
        if len(ca) != 1 or len(cb) != 1 or ca[0].atom is None or cb[0].atom is None or ca[0].width != cb[0].width:
            return False
        self.union(ca[0].atom, cb[0].atom)
        return True

    @staticmethod
    def _alignable(ca: Dim, cb: Dim) -> bool:
        return sum(s.size for s in ca) == sum(s.size for s in cb) and all(s.block == 1 for s in ca + cb)

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
            if r != a or self._pinned[r] or r in names or r in self._parts or r in self._coarse:
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

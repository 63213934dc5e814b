"""Global model versions kept while devices (or gateways) still train from them: the
asynchronous modes' memory of the models they handed out.

    >>> import torch
    >>> v = Versions({"w": torch.zeros(2)})
    >>> v.add(1, {"w": torch.ones(2)}); v.keep({1}); sorted(v)
    [1]
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import torch

__all__ = ["Versions", "copy_params"]

Params = dict[str, torch.Tensor]


def copy_params(params: Mapping[str, torch.Tensor]) -> Params:
    """A detached copy of a model's weights."""
    return {k: v.detach().clone() for k, v in params.items()}


class Versions:
    """Version number -> weights (copies, so the global model may move on in place)."""

    def __init__(self, first: Mapping[str, torch.Tensor]) -> None:
        self._by: dict[int, Params] = {0: copy_params(first)}

    def add(self, version: int, params: Mapping[str, torch.Tensor]) -> None:
        """Keep a copy of `params` as `version`."""
        self._by[version] = copy_params(params)

    def __getitem__(self, version: int) -> Params:
        return self._by[version]

    def __contains__(self, version: object) -> bool:
        return version in self._by

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._by))

    def __len__(self) -> int:
        return len(self._by)

    def keep(self, live: Iterable[int]) -> None:
        """Drop every version not in `live`."""
        live = set(live)
        for v in [v for v in self._by if v not in live]:
            del self._by[v]

    def plain(self, versions: Iterable[int]) -> dict[int, Params]:
        """These versions as a checkpoint holds them."""
        return {v: self._by[v] for v in sorted(set(versions))}

    def load(self, plain: Mapping[Any, Mapping[str, torch.Tensor]]) -> None:
        """Restore from `plain()` (copies)."""
        self._by = {int(v): copy_params(p) for v, p in plain.items()}

"""Reading a YAML table of sourced figures (the device catalogue, the radio technologies) with
errors of one line that name the file, the entry and the field.

    >>> finite_number("radios.yaml: radio 'ble'", "tx_w", "1.9e-2")
    0.019
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from raysim.errors import FleetError

__all__ = ["finite_number", "read_mapping"]


def finite_number(where: str, key: str, raw: Any) -> float:
    """`raw` as a float, or FleetError naming `where` and `key`."""
    if isinstance(raw, str):
        try:  # YAML 1.1 reads `8.0e7` (no exponent sign) as a string; accept it as a number
            raw = float(raw)
        except ValueError:
            pass
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise FleetError(f"{where} field {key!r} must be a finite number, got {raw!r}")
    return float(raw)


def read_mapping(path: Path, what: str) -> dict[Any, Any]:
    """The non-empty top-level mapping of a YAML file (`what` names it in errors)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise FleetError(f"{path}: cannot read {what} ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise FleetError(f"{path}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict) or not raw:
        raise FleetError(f"{path}: {what} must be a non-empty mapping of name to fields")
    return raw

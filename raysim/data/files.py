"""Locating a dataset's files under `data.root` (nothing is ever downloaded)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Optional, Sequence

from raysim.data.base import DataError

DOCS = "see docs/datasets.md"


def require_root(root: Optional[str], dataset: str) -> Path:
    """The dataset directory, or a DataError when it is unset or absent."""
    if root is None:
        raise DataError(f"data.root: required for dataset {dataset} (the directory with its files; {DOCS})")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root {root}: directory not found ({DOCS})")
    return path


def find_file(root: Path, name: str, gz: bool = False, subdirs: Sequence[str] = ()) -> Path:
    """`root[/subdir]/name`, or `name.gz` when `gz` is allowed; a DataError when neither exists."""
    for d in ("", *subdirs):
        base = root / d if d else root
        for candidate in (name, name + ".gz") if gz else (name,):
            p = base / candidate
            if p.is_file():
                return p
    shown = name + "(.gz)" if gz else name
    where = f" (also looked in {', '.join(s + '/' for s in subdirs)})" if subdirs else ""
    raise DataError(f"data.root {root}: file {shown} not found{where} ({DOCS})")


# No dataset file raysim reads decompresses to more than this (CIFAR-10's largest is 31 MB,
# MNIST's 47 MB): a larger stream is a decompression bomb or the wrong file.
MAX_DECOMPRESSED = 4 << 30
_CHUNK = 1 << 20


def read_bytes(path: Path, limit: int = MAX_DECOMPRESSED) -> bytes:
    """A file's bytes, gunzipped when its name ends in .gz; a DataError when unreadable,
    corrupt, or (decompressed) larger than `limit`, which is checked as the stream is read."""
    try:
        if path.suffix == ".gz":
            parts, size = [], 0
            with gzip.open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise DataError(f"{path}: decompresses to more than {limit >> 20} MiB; not a dataset file")
                    parts.append(chunk)
            return b"".join(parts)
        if path.stat().st_size > limit:
            raise DataError(f"{path}: {path.stat().st_size >> 20} MiB, larger than any dataset file ({limit >> 20} MiB)")
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # gzip: BadGzipFile (OSError), EOFError, zlib.error
        raise DataError(f"{path}: cannot read ({_one_line(err)})") from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__

"""Strict YAML for scenarios: what a safe loader accepts, minus what silently goes wrong.

On top of PyYAML's safe loader:

* a key given twice in one mapping is an error (PyYAML keeps the second silently);
* nesting deeper than `MAX_DEPTH` and aliases that expand past `MAX_NODES` values (or refer to
  themselves) are errors, found before anything recurses or copies;
* `1e-3` and `2E5` are numbers, as in YAML 1.2 and JSON (YAML 1.1 reads them as strings);
* the file must be UTF-8 text of at most `MAX_BYTES`.

Every problem is a `YamlInputError` (a `BadInput`) whose one-line message names the source and,
where there is one, the line and column.

    >>> parse_yaml("a: 1\\na: 2\\n", "s.yaml")
    Traceback (most recent call last):
    raysim.errors.YamlInputError: s.yaml: line 2, column 1: key 'a' given twice (first on line 1)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from raysim.errors import YamlInputError

MAX_DEPTH = 32           # a scenario is 3 levels deep; lists add one or two
MAX_NODES = 100_000      # values after aliases are expanded
MAX_BYTES = 1 << 20      # a scenario file; real ones are a few KB


_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X)


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with duplicate-key and depth checks."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlInputError(f"{_where(mark)}: nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # noqa: ANN001
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key; PyYAML reports it below
                continue
            if first is not None:
                raise YamlInputError(f"{_where(key_node.start_mark)}: key {key!r} given twice "
                                     f"(first on line {first.line + 1})")
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


# Resolvers are per class: extend a copy of SafeLoader's table with YAML 1.2 floats.
_StrictLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
# Integers must still win over floats for plain digits: PyYAML tries resolvers in order.
for _first, _resolvers in _StrictLoader.yaml_implicit_resolvers.items():
    _resolvers.sort(key=lambda r: r[0] == "tag:yaml.org,2002:float")


def _check_expansion(value: Any) -> None:
    """Count the values the document holds once aliases are expanded (each alias counts its
    whole target again), without expanding anything; refuse self-referencing ones."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(v: Any, depth: int) -> int:
        if not isinstance(v, (dict, list)):
            return 1
        key = id(v)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise YamlInputError("an alias refers to the value that holds it (a recursive structure)")
        if depth > MAX_DEPTH:
            raise YamlInputError(f"nested more than {MAX_DEPTH} levels deep (through aliases)")
        active.add(key)
        items = list(v.keys()) + list(v.values()) if isinstance(v, dict) else v
        n = 1
        for item in items:
            n += size(item, depth + 1)
            if n > MAX_NODES:
                raise YamlInputError(f"expands to more than {MAX_NODES} values (aliases nested in aliases?)")
        active.discard(key)
        sizes[key] = n
        return n

    size(value, 0)


def parse_yaml(text: str, source: str) -> Any:
    """The value of a YAML document, strictly (see the module docstring); `source` names it
    in errors."""
    try:
        loader = _StrictLoader(text)
        try:
            value = loader.get_single_data()
        finally:
            loader.dispose()
        _check_expansion(value)
        return value
    except YamlInputError as err:
        raise YamlInputError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" {_where(mark)}:" if mark is not None else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise YamlInputError(f"{source}:{where} not valid YAML ({problem})") from None


def read_yaml_file(path: str | Path, what: str = "scenario") -> Any:
    """Parse a YAML file: at most MAX_BYTES, UTF-8 text (a BOM allowed)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except IsADirectoryError:
        raise YamlInputError(f"{p}: is a directory, not a {what} file") from None
    except OSError as err:
        raise YamlInputError(f"{p}: cannot read {what} file ({err.strerror})") from None
    if len(data) > MAX_BYTES:
        raise YamlInputError(f"{p}: larger than {MAX_BYTES >> 10} KiB, too large for a {what} file")
    if b"\0" in data:
        raise YamlInputError(f"{p}: not a text file (it holds NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise YamlInputError(f"{p}: not UTF-8 text (byte {err.start}: {data[err.start]:#04x})") from None
    return parse_yaml(text, str(p))


def parse_value(text: str, source: str) -> Any:
    """A value given on the command line (`--set key=VALUE`) as YAML; text that is not valid
    YAML stays a string, but duplicate keys, deep nesting and alias bombs are still errors."""
    try:
        return parse_yaml(text, source)
    except YamlInputError as err:
        if "not valid YAML" in str(err):
            return text
        raise

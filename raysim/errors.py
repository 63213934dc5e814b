"""The error boundary: every failure of a command or an API call ends as one clear line.

Every one-line error of raysim is defined here and derives from one of two bases: `BadInput`
(exit code 2: fix the input and run again) or `RunFailed` (exit code 1: the run could not go
on). The tree, with when each is raised (the older homes, e.g. `raysim.data.base.DataError`,
still import them):

    BadInput (ValueError)      exit 2  input raysim cannot use; the line names the file, field or line and the fix
    |-- ScenarioError          exit 2  a scenario or --set override is invalid: a field, or a combination of
    |   |                              modes and features (raysim.scenario.compat)
    |   `-- SweepError         exit 2  a --grid is malformed, or one of its points is an invalid scenario
    |-- PluginError            exit 2  a component brought by import path or as an object broke its contract:
    |                                  names it (module:QualName), what it returned or raised, what was expected
    |-- SlicingError           exit 2  a plain torch module cannot be sliced into submodels (names the module,
    |                                  the op, and the way out: train it whole)
    |-- YamlInputError         exit 2  YAML the strict loader refuses (duplicate key, too deep, not UTF-8, ...)
    |-- DataError              exit 2  a dataset's files or arrays cannot be loaded or partitioned
    |-- FleetError             exit 2  a fleet, device catalogue, availability or fleet trace problem
    |-- RunError               exit 2  a run directory is missing, incomplete, corrupt, or cannot be resumed
    |-- DeviceError            exit 2  runtime.device / runtime.gpus_per_host cannot be served where the run is
    `-- ClusterError           exit 2  a Ray cluster cannot be reached, refuses to join, or is too small
    RunFailed (RuntimeError)   exit 1  a run could not go on; the line says what happened and what to do
    |-- CoordinatorLost        exit 1  the coordinator died more often than runtime.coordinator_restarts allows
    `-- NoDevices              exit 1  no device (or gateway) could train for too long: all offline for good
    InternalError              exit 1  (Python API) anything unanticipated: a raysim bug, already logged
    KeyboardInterrupt          exit 130

Anything else is a bug or an environment failure nobody anticipated: the boundary writes its
traceback to a log file and reports one line with the log's path and "please report it" (exit
code 1). An error raised inside a Ray actor (a device host, the coordinator) reaches the driver
wrapped in Ray's `RayTaskError`, whose text is the remote traceback: the boundary unwraps it
(`unwrap`), so a `BadInput` raised on a device host is still one line and exit 2. Every class
here pickles (Ray sends it back to the driver), whatever its constructor takes.

    from raysim.errors import guard
    guard(lambda: do_the_work())          # CLI: prints one line on failure, returns the exit code
    with api_boundary():                  # Python API: one-line exceptions, no chained noise
        simulate(...)

This module imports nothing beyond the standard library, so that reporting an error never
waits for torch or Ray to load.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import tempfile
import traceback
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, Optional, TextIO

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
LOG_DIR_ENV = "RAYSIM_LOG_DIR"


def _rebuild(cls: type, args: tuple, state: dict) -> BaseException:
    """An error unpickled without calling its constructor (see `_reduce`)."""
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(state)
    return err


def _reduce(self: BaseException) -> tuple:
    # The default (`cls(*self.args)`) calls the constructor with the message alone, which fails
    # for a class whose constructor takes its parts (PluginError, SlicingError): Ray would then
    # lose the error it sends back from an actor.
    return _rebuild, (type(self), self.args, dict(self.__dict__))


class BadInput(ValueError):
    """Input raysim cannot use; the message is one line naming the file, field or line."""

    __reduce__ = _reduce


class RunFailed(RuntimeError):
    """A run could not go on; the message is one line saying what happened and what to do."""

    __reduce__ = _reduce


class ScenarioError(BadInput):
    """A scenario (or override) is invalid; the message is one line naming the field."""


class SweepError(ScenarioError):
    """A grid is malformed; the message is one line naming the grid item."""


class ClusterError(BadInput):
    """A Ray cluster cannot be reached or refuses the connection; the message names the fix."""


class DeviceError(BadInput):
    """`runtime.device` or `runtime.gpus_per_host` cannot be served where the run is."""


class YamlInputError(BadInput):
    """YAML that the strict loader refuses; one line naming the source and the line."""


class DataError(BadInput):
    """A dataset cannot be loaded or partitioned; the message is one line naming the file."""


class FleetError(BadInput):
    """A fleet, catalogue or trace problem, as one line.

    For trace files the message names the file, and the line (CSV) or row (parquet) and the
    column of the offending cell, so the CLI can print it as is and exit with code 2.
    """


class RunError(BadInput):
    """A run directory is missing, incomplete or malformed."""


class SlicingError(BadInput):
    """A model cannot be sliced into submodels; the message is one line naming the module and
    the op, and the way out (train the whole model)."""

    def __init__(self, path: str, op: str, reason: str) -> None:
        self.path = path
        self.op = op
        self.reason = reason
        where = path or "(root)"
        super().__init__(f"model: cannot slice: module '{where}' calls {op} ({reason}); "
                         "use compression.strategy: full")


class PluginError(BadInput):
    """A component the user brought (by import path or as an object) broke its contract: the
    message names the component, what it returned or raised, and what raysim expected.

        >>> class Twice: ...
        >>> str(PluginError(Twice(), "selector", "returned device 3 twice; expected 5 distinct online ids"))
        'selector raysim.errors:Twice returned device 3 twice; expected 5 distinct online ids'
    """

    def __init__(self, plugin: object, role: str, problem: str) -> None:
        # a name (str) is taken as it is: that is how the error crosses processes (`__reduce__`)
        self.plugin = plugin if isinstance(plugin, str) else plugin_name(plugin)
        self.role, self.problem = role, problem
        super().__init__(f"{role} {self.plugin} {problem}")

    def __reduce__(self) -> tuple[type["PluginError"], tuple[str, str, str]]:
        # Ray sends an actor's exception to the driver pickled: rebuilt from the three parts
        return type(self), (self.plugin, self.role, self.problem)


class CoordinatorLost(RunFailed):
    """The coordinator died more often than `runtime.coordinator_restarts` allows."""


class NoDevices(RunFailed):
    """No device (flat) or no gateway's devices (gateways) could train for too long: every
    device offline for good, or without training samples."""


class InternalError(RuntimeError):
    """An unanticipated failure, already logged; the message holds the log file's path."""


def plugin_name(obj: object) -> str:
    """How a component is named to its author: `module:QualName` of a function or class, or of
    an instance's class (of a `functools.partial`: of the function it binds).

        >>> plugin_name(one_line)
        'raysim.errors:one_line'
    """
    while isinstance(obj, functools.partial):
        obj = obj.func
    target = obj if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    mod = getattr(target, "__module__", None) or "?"
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
    return f"{mod}:{name}"


def is_builtin(obj: object) -> bool:
    """Whether a component is one of raysim's own (its module is in the raysim package)."""
    return plugin_name(obj).startswith("raysim.")


def broken(obj: object, role: str, problem: str) -> Exception:
    """The error for a component that broke its contract: a `PluginError` for the user's, and
    for one of raysim's own a plain `RuntimeError` (a raysim bug: the boundary logs it and asks
    for a report)."""
    err = PluginError(obj, role, problem)
    return RuntimeError(f"built-in {err}") if is_builtin(obj) else err


def one_line(text: object) -> str:
    """`text` folded into a single line (white space, newlines included, collapsed)."""
    return " ".join(str(text).split())


def unwrap(err: BaseException) -> BaseException:
    """The error itself, out of the Ray errors that carry it: an error raised in a Ray task or
    actor reaches the caller as a `RayTaskError` whose `cause` is the original (and whose text is
    the remote traceback); one raised on a device host and passed on by the coordinator is
    wrapped twice."""
    seen = 0
    while isinstance(getattr(err, "cause", None), BaseException) and seen < 8:
        err, seen = err.cause, seen + 1  # type: ignore[attr-defined]
    return err


def describe(err: BaseException) -> Optional[tuple[int, str]]:
    """(exit code, one-line message) of an anticipated failure, or None for anything else
    (wherever it was raised: see `unwrap`)."""
    err = unwrap(err)
    if isinstance(err, BadInput):
        return EXIT_BAD_INPUT, one_line(err)
    if isinstance(err, RunFailed):
        return EXIT_FAILED, one_line(err)
    return None


def log_dir() -> Path:
    """Where tracebacks of unanticipated failures go: $RAYSIM_LOG_DIR, else <tmp>/raysim-logs."""
    return Path(os.environ.get(LOG_DIR_ENV) or Path(tempfile.gettempdir()) / "raysim-logs")


def write_log(err: BaseException, argv: Optional[list[str]] = None) -> Optional[Path]:
    """Write `err`'s traceback (and the command line) to a new log file; its path, or None
    when no log could be written."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        d = log_dir()
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"raysim-{stamp}-{os.getpid()}.log"
        with open(path, "w") as f:
            f.write(f"command: {' '.join(argv if argv is not None else sys.argv)}\n\n")
            traceback.print_exception(type(err), err, err.__traceback__, file=f)
        return path
    except OSError:
        return None


def gist(err: BaseException, limit: int = 160) -> str:
    """`err` in a few words: its type and the first line of its message, at most `limit`
    characters. An error raised in a Ray task carries the original one (`cause`) and the
    remote traceback in its text: the gist is the original's, and the traceback goes to the log."""
    err = unwrap(err)
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if len(lines) > 1 and any(ln.startswith(("Traceback", 'File "')) for ln in lines):
        lines = lines[-1:]   # a traceback in the text (an actor's creation task): its last line says what
    name = type(err).__name__
    text = f"{name}: {lines[0]}" if lines else name
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def internal_message(err: BaseException, log: Optional[Path]) -> str:
    """The one line reported for an unanticipated failure: what (in a few words, see `gist`)
    and where the full traceback is."""
    where = f"the traceback is in {log}" if log else "no log could be written"
    return f"unexpected failure ({gist(err)}); {where}; please report it with that file"


def guard(fn: Callable[[], int], prog: str = "raysim", stderr: Optional[TextIO] = None,
          argv: Optional[list[str]] = None) -> int:
    """Call `fn` and return its exit code; every failure becomes one line on stderr.

    Bad input: exit 2. A run that failed in an anticipated way: 1. Ctrl-C: 130. SIGTERM
    (which Ray's driver turns into `SystemExit(15)`): re-raised after one line. Anything else:
    its traceback goes to a log file, and the line names it (exit 1).
    """
    err_out = stderr if stderr is not None else sys.stderr

    def say(level: str, msg: str) -> None:
        err_out.write(f"{prog}: {level}: {msg}\n" if level else f"{prog}: {msg}\n")
        err_out.flush()

    try:
        return fn()
    except KeyboardInterrupt:
        say("", "interrupted")
        return EXIT_INTERRUPTED
    except SystemExit as err:
        if err.code == signal.SIGTERM:
            say("", "terminated")
        raise
    except RecursionError as err:  # nesting too deep for anything that reads it: an input problem
        log = write_log(err, argv)
        say("error", f"input nested too deeply to read ({one_line(err)}); the traceback is in {log}")
        return EXIT_BAD_INPUT
    except Exception as err:  # noqa: BLE001 - the boundary: nothing passes as a traceback
        known = describe(err)
        if known is not None:
            say("error", known[1])
            return known[0]
        say("error", internal_message(err, write_log(err, argv)))
        return EXIT_FAILED


@contextmanager
def api_boundary() -> Iterator[None]:
    """For Python entry points: anticipated errors leave as themselves, without the chain of
    internal exceptions behind them; anything else is logged and raised as `InternalError`
    whose one-line message names the log file."""
    try:
        yield
    except InternalError:
        raise
    except Exception as err:  # noqa: BLE001 - the boundary: anticipated errors leave as themselves
        known = unwrap(err)
        if isinstance(known, (BadInput, RunFailed)):
            known.__cause__ = None
            known.__suppress_context__ = True
            raise known.with_traceback(None) from None
        raise InternalError(internal_message(err, write_log(err))) from err

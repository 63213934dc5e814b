"""The error boundary: every failure of a command or an API call ends as one clear line.

Two kinds of anticipated failure have their own base class, and every one-line error of
raysim derives from one of them:

* `BadInput` (exit code 2): a scenario, an override, a data or trace file, a run directory
  or a cluster address is wrong; the message names the file, field or line and the fix.
* `RunFailed` (exit code 1): a run could not go on (e.g. its coordinator was lost too often);
  the message says what to do next.

Anything else is a bug or an environment failure nobody anticipated: the boundary writes its
traceback to a log file and reports one line with the log's path (exit code 1).

    from raysim.errors import guard
    guard(lambda: do_the_work())          # CLI: prints one line on failure, returns the exit code
    with api_boundary():                  # Python API: one-line exceptions, no chained noise
        simulate(...)

This module imports nothing beyond the standard library, so that reporting an error never
waits for torch or Ray to load.
"""

from __future__ import annotations

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


class BadInput(ValueError):
    """Input raysim cannot use; the message is one line naming the file, field or line."""


class RunFailed(RuntimeError):
    """A run could not go on; the message is one line saying what happened and what to do."""


class ScenarioError(BadInput):
    """A scenario (or override) is invalid; the message is one line naming the field."""


class ClusterError(BadInput):
    """A Ray cluster cannot be reached or refuses the connection; the message names the fix."""


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


def plugin_name(obj: object) -> str:
    """How a component is named to its author: `module:QualName` of a function or class, or of
    an instance's class.

        >>> plugin_name(one_line)
        'raysim.errors:one_line'
    """
    target = obj if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    mod = getattr(target, "__module__", None) or "?"
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
    return f"{mod}:{name}"


class InternalError(RuntimeError):
    """An unanticipated failure, already logged; the message holds the log file's path."""


def one_line(text: object) -> str:
    """`text` folded into a single line (white space, newlines included, collapsed)."""
    return " ".join(str(text).split())


def unwrap(err: BaseException) -> BaseException:
    """The original error behind one raised in a Ray task or actor (Ray wraps it, with the
    remote traceback in its text, and keeps the original as `cause`)."""
    seen = 0
    while isinstance(getattr(err, "cause", None), BaseException) and seen < 8:
        err, seen = err.cause, seen + 1  # type: ignore[attr-defined]
    return err


def describe(err: BaseException) -> Optional[tuple[int, str]]:
    """(exit code, one-line message) of an anticipated failure, or None for anything else."""
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
    except (BadInput, RunFailed) as wrapped:
        err = unwrap(wrapped)   # raised in an actor: the original, not Ray's wrapper and its text
        err.__cause__ = None
        err.__suppress_context__ = True
        raise err.with_traceback(None) from None
    except InternalError:
        raise
    except Exception as err:  # noqa: BLE001
        raise InternalError(internal_message(err, write_log(err))) from err

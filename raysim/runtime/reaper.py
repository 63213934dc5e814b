"""No process outlives a local run: a watcher ends Ray's processes when their driver dies.

Ray ties its GCS and raylet to the driver that started them, but its agents (dashboard agent,
runtime-env agent) and some workers were seen alive a minute after the driver was killed with
SIGKILL. So a driver that starts a local instance also starts this small watcher, in a
session of its own (no terminal signal reaches it), with a pipe from the driver on its stdin:

* while the driver lives, the watcher records the driver's descendants (pid and start time,
  so a reused pid is never mistaken for one of them) twice a second;
* when the pipe closes without a word, the driver is gone (killed, crashed): the watcher kills
  every recorded process still alive, and their descendants;
* `release()` (after `ray.shutdown()`) writes a word first: the watcher exits, killing nothing.

Linux only (it reads /proc); elsewhere nothing is watched.

    python -m raysim.runtime.reaper DRIVER_PID
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

POLL_S = 0.5
GRACE_S = 1.0        # let Ray's own fate-sharing act first
RELEASE = b"r"

_watcher: Optional[subprocess.Popen] = None


def _stat(pid: int) -> Optional[tuple[int, int]]:
    """(parent pid, start time) of a live, non-zombie process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def _table() -> dict[int, tuple[int, int]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                out[int(entry)] = st
    return out


def descendants(root: int, table: Optional[dict[int, tuple[int, int]]] = None) -> dict[int, int]:
    """Every live descendant of `root`: pid -> start time."""
    table = _table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in out:
            out[pid] = table[pid][1]
            todo.extend(children.get(pid, []))
    return out


def _kill(recorded: dict[int, int]) -> None:
    table = _table()
    doomed = {p: t for p, t in recorded.items() if p in table and table[p][1] == t}
    for pid in list(doomed):
        doomed.update(descendants(pid, table))
    doomed.pop(os.getpid(), None)
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def watch(driver: int) -> None:
    """The watcher's loop (see the module docstring)."""
    recorded: dict[int, int] = {}
    me = os.getpid()
    while True:
        ready, _, _ = select.select([sys.stdin.buffer], [], [], POLL_S)
        if ready:
            word = os.read(sys.stdin.fileno(), 1)
            if word == RELEASE:
                return
            if not word:  # EOF: the driver is gone
                time.sleep(GRACE_S)
                _kill(recorded)
                return
        now = descendants(driver)
        now.pop(me, None)
        recorded.update(now)
        # Forget exited processes, so that the record does not grow over a long run.
        live = _table()
        recorded = {p: t for p, t in recorded.items() if p in live and live[p][1] == t}


def watch_local_instance() -> None:
    """Start the watcher for this driver (once; a no-op where /proc is missing)."""
    global _watcher
    if _watcher is not None and _watcher.poll() is None:
        return
    if not Path("/proc/self/stat").exists():
        return
    _watcher = subprocess.Popen([sys.executable, "-m", "raysim.runtime.reaper", str(os.getpid())],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)


def release() -> None:
    """The local instance was shut down in order: stop the watcher without killing anything."""
    global _watcher
    w, _watcher = _watcher, None
    if w is None:
        return
    assert w.stdin is not None  # started with stdin=PIPE
    try:
        w.stdin.write(RELEASE)
        w.stdin.close()
    except (OSError, ValueError):
        pass
    try:
        w.wait(timeout=5)
    except subprocess.TimeoutExpired:
        w.kill()
        w.wait()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]))

"""One writer per run directory: ``DIR/.bertcli.lock`` holds the writer's pid and host as JSON.

:func:`run_lock` takes the lock when a command starts writing a run directory and removes it at
exit (also after an error or Ctrl-C), with the directory itself when the run created it and
left it empty. A second process gets a :class:`LockError` naming the
holder. A lock left by a process that died (its pid no longer runs on this host) is taken over
with a warning. Under ``torchrun`` only rank 0 takes it: the ranks of one run share the directory.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bertcli.errors import BertcliError
from bertcli.paths import make_run_dir

LOCK_NAME = ".bertcli.lock"


class LockError(BertcliError):
    """Another process is writing the same run directory."""


def _alive(pid: int) -> bool:
    if pid <= 0:  # not a process id (0 and -1 would address process groups)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, under another user
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _create(path: Path, payload: str) -> bool:
    """Create ``path`` holding ``payload`` atomically (hard link of a full temp file); False if it exists."""
    tmp = path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
    tmp.write_text(payload, encoding="utf-8")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@contextmanager
def run_lock(directory: str | os.PathLike, *, flag: str = "--out",
             warn: Callable[[str], None] | None = None) -> Iterator[Path | None]:
    """Hold ``directory/.bertcli.lock`` for the block (created with ``directory``); yield its path."""
    if int(os.environ.get("RANK", "0") or 0) != 0:
        yield None
        return
    warn = warn or _warn
    directory = Path(directory)
    created = not directory.exists()
    make_run_dir(directory, LockError, flag)
    path = directory / LOCK_NAME
    host = socket.gethostname()
    mine = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv[:1] + sys.argv[1:2])}
    payload = json.dumps(mine)
    for _ in range(5):
        try:
            if _create(path, payload):
                break
        except OSError as exc:
            raise LockError(f"{path}: cannot write the lock file ({exc.strerror}); choose another {flag}") from None
        holder = _read(path)
        if holder is None:  # released meanwhile
            continue
        pid, where = holder.get("pid"), holder.get("host")
        if isinstance(pid, int) and where == host and not _alive(pid):
            stale = path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
            try:
                os.replace(path, stale)
            except FileNotFoundError:
                continue
            if _read(stale) != holder:  # another process took it over first: give its lock back
                _create(path, stale.read_text(encoding="utf-8"))
                stale.unlink(missing_ok=True)
                continue
            stale.unlink(missing_ok=True)
            warn(f"{path}: taking over the lock of process {pid} on {host}, which no longer runs "
                 f"(it was killed or crashed)")
            continue
        who = (f"process {pid} on {where}" if pid is not None else "an unreadable lock file")
        since = f" since {holder['started']}" if holder.get("started") else ""
        raise LockError(
            f"{directory}: another bertcli run is writing this directory ({who}{since}); wait for it to "
            f"finish or choose another {flag} (if no such process runs, delete {path})"
        )
    else:
        raise LockError(f"{path}: could not take the lock (other processes keep taking it); try again")
    try:
        yield path
    finally:
        if _read(path) == mine:
            path.unlink(missing_ok=True)
        if created:  # a run that failed before writing anything leaves no empty directory behind
            try:
                directory.rmdir()
            except OSError:
                pass

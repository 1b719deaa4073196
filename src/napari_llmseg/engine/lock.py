"""An exclusive lock on an output store, so that two runs never write into one store.

The lock is a small JSON file inside the store (``.napari-llmseg.lock``), created with
``O_CREAT | O_EXCL`` (atomic on local file systems and NFSv3+), holding who writes: process
id, host name, the process's start time and a run id. A run killed with ``kill -9`` leaves it
behind; the next run recognises it as stale when it was written on this host by a process that
no longer exists (or whose id now belongs to a process started at another time), and takes
it over. A lock written on another host is never taken over automatically: the message says
who holds it and how to remove it if that run is dead.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = ".napari-llmseg.lock"


class StoreLockedError(RuntimeError):
    """Another run is writing the store."""


class StoreReplacedError(RuntimeError):
    """The store this run writes was replaced or unlocked by someone else during the run."""


def process_start_time(pid: int) -> float | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return float(fields[19])  # field 22 of /proc/PID/stat: starttime
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


@dataclass(frozen=True)
class LockRecord:
    pid: int
    host: str
    started: float | None
    run_id: str
    created: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.created))
        return f"process {self.pid} on {self.host}, since {when}"

    def is_stale(self) -> bool:
        """True when the holder is known to be gone: same host, and its process is dead or
        its id was reused by a process that started at another time."""
        if self.host != socket.gethostname():
            return False
        if not _alive(self.pid):
            return True
        now_started = process_start_time(self.pid)
        return self.started is not None and now_started is not None and now_started != self.started


class StoreLock:
    """``with StoreLock(store_dir): ...`` holds the store for one run.

    Parameters
    ----------
    store : Path
        The store's folder (created if missing).
    """

    def __init__(self, store: Path) -> None:
        self.store = Path(store)
        self.path = self.store / LOCK_NAME
        self.record: LockRecord | None = None
        self._made_folder = False

    def acquire(self) -> StoreLock:
        """Take the lock, or take over a stale one.

        Raises
        ------
        StoreLockedError
            If another live run holds it (the message names the holder).
        """
        if not self.store.exists():
            self.store.mkdir(parents=True)
            self._made_folder = True
        mine = LockRecord(
            os.getpid(), socket.gethostname(), process_start_time(os.getpid()),
            uuid.uuid4().hex, time.time(),
        )  # fmt: skip
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:  # written this instant, or an empty file left by a crash
                    if time.time() - _mtime(self.path) < 5:
                        time.sleep(0.2)
                        continue
                elif not holder.is_stale():
                    raise StoreLockedError(
                        f"output '{self.store}' is being written by another run ("
                        f"{holder.describe()}); wait for it to finish or choose another output"
                        + _remote_hint(holder, self.path)
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its writer is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(mine.__dict__, f)
            self.record = mine
            return self
        raise StoreLockedError(f"could not lock output '{self.store}' ({self.path})")

    def holder(self) -> LockRecord | None:
        """Who holds the lock now, or None (no lock, or an unreadable one)."""
        try:
            data = json.loads(self.path.read_text())
            return LockRecord(**data)
        except (OSError, ValueError, TypeError):
            return None

    def verify(self) -> None:
        """Raise StoreReplacedError unless this run still holds the lock."""
        holder = self.holder()
        if self.record is None or holder is None or holder.run_id != self.record.run_id:
            raise StoreReplacedError(
                f"output '{self.store}' was replaced or unlocked by someone else while this run "
                "was writing it; its contents are not this run's result. Run again (with "
                "--overwrite) when nothing else writes there"
            )

    def release(self) -> None:
        """Remove the lock if it is still this run's (and the folder, if this run made it
        and left nothing in it)."""
        holder = self.holder()
        if self.record is not None and holder is not None and holder.run_id == self.record.run_id:
            self.path.unlink(missing_ok=True)
            if self._made_folder:
                with contextlib.suppress(OSError):
                    self.store.rmdir()  # only if empty
        self.record = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _remote_hint(holder: LockRecord, path: Path) -> str:
    if holder.host == socket.gethostname():
        return ""
    return f" (if that run is dead, delete '{path}')"

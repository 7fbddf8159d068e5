"""One process per run directory.

``RUN_DIR/.lock`` holds the owner's process id and host name. A second process
on the same directory is refused; a lock left behind by a process that no
longer runs (killed, crashed) is recognised as stale and taken over.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path


class RunDirLocked(ValueError):
    """Another live process is using the run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self.owned = False

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
                    return self  # this process already holds it (a nested run)
                if owner is not None and (owner.get("host") != me["host"] or _alive(int(owner.get("pid", -1)))):
                    raise RunDirLocked(
                        f"{self.run_dir} is in use by process {owner.get('pid')} on {owner.get('host')}; "
                        f"wait for it to finish (or delete {self.path} if that process is gone)")
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.owned = True
            return self
        raise RunDirLocked(f"could not lock {self.run_dir}: {self.path} keeps reappearing")

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

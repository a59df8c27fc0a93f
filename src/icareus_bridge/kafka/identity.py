"""Instance identity of a stage: `planner.instance_id` / `dispatcher.instance_id` (empty: the
host name) give its `group.instance.id` (`<role>-<id>`) and `transactional.id`
(`<prefix>-<role>-<id>`), stable across restarts. Two live processes with one id fence each
other, so at start a process claims its ids on this host (an exclusive `flock` on a file under
the temporary directory, released by the kernel when the process ends, even by SIGKILL) and a
second process with the same ids is refused before any Kafka work."""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from icareus_bridge.config import KafkaSettings

LOCK_DIR_NAME = "icareus-bridge"


def resolve_instance_id(configured: str) -> str:
    """The configured instance id, else the host name (stable for a StatefulSet pod)."""
    return configured or socket.gethostname()


class IdentityError(Exception):
    """The ids cannot be claimed for this process; the message says what to change."""


class InstanceInUse(IdentityError):
    """Another live process on this host holds the same ids; the message names the setting."""


@dataclass
class InstanceClaim:
    """Holds a stage's ids on this host until `release()` or the end of the process."""

    role: str
    instance: str
    path: Path
    _file: IO[str] | None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the lock
            self._file = None


def lock_path(kafka: KafkaSettings, role: str, group_id: str, instance: str) -> Path:
    """One file per cluster, group and instance id: processes on other clusters or groups may
    use the same instance id."""
    key = f"{kafka.bootstrap_servers}|{group_id}|{kafka.transactional_id_prefix}|{instance}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / LOCK_DIR_NAME / f"{role}-{digest}.lock"


def claim_instance(kafka: KafkaSettings, role: str, group_id: str, instance: str) -> InstanceClaim:
    """Claim `role`'s ids for this process; `InstanceInUse` when another process has them."""
    path = lock_path(kafka, role, group_id, instance)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+", encoding="utf-8")
    except OSError as exc:
        raise IdentityError(
            f"cannot create the lock file {path} that keeps {role}.instance_id '{instance}' to "
            f"one process on this host: {exc} (the directory is $TMPDIR/{LOCK_DIR_NAME})"
        ) from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise InstanceInUse(
            f"{role} instance id '{instance}' is already in use on this host by process "
            f"{holder} (group.instance.id={role}-{instance} in group {group_id}, "
            f"transactional.id={kafka.transactional_id_prefix}-{role}-{instance}); two "
            f"processes with one id fence each other. Give this process its own "
            f"{role}.instance_id (ICAREUS_BRIDGE__{role.upper()}__INSTANCE_ID)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return InstanceClaim(role, instance, path, handle)


__all__ = [
    "IdentityError",
    "InstanceClaim",
    "InstanceInUse",
    "claim_instance",
    "lock_path",
    "resolve_instance_id",
]

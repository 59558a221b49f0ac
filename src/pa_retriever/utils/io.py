"""Small file helpers: atomic writes, stable hashes for cache keys, and claims on shared work."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` that replaces it only if the block finishes: a crash (even kill -9)
    leaves the old file or none, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def stable_hash(obj: Any, length: int = 10) -> str:
    """A short hash of a JSON-able object, independent of key order: the cache keys."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def texts_fingerprint(texts: list[str]) -> str:
    """A content hash of a list of texts (about a second per GB): same texts, same cache entry."""
    digest = hashlib.sha1()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


STALE_CLAIM_SECONDS = 6 * 3600  # a claim from another machine older than this is taken to be abandoned
UNWRITTEN_CLAIM_SECONDS = 60  # an empty claim older than this lost its writer between creating and writing it


def try_claim(path: Path) -> bool:
    """Claim a piece of shared work by creating `path` (host, pid) atomically: True if this process now holds it.
    A claim whose holder is gone (a dead process on this host, or one from another host left for hours) is taken
    over. Jobs sharing a cache thus split the work instead of doing it twice."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if not _take_over(path):
                return False
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()}\n")
        return True
    return False


def claim_unfinished(claim: Path, finished: Callable[[], bool]) -> bool:
    """Claim work that is not `finished()`: True if this process now holds it and must do it. Finished is asked
    again once claimed, since another job may finish the work and release its claim between a first look and
    the claim."""
    if finished() or not try_claim(claim):
        return False
    if finished():
        release_claim(claim)
        return False
    return True


def release_claim(path: Path) -> None:
    """Give up a claim this process holds (after its work is written, or when it fails)."""
    try:
        host, pid = Path(path).read_text().split()
    except (OSError, ValueError):
        return
    if host == socket.gethostname() and int(pid) == os.getpid():
        Path(path).unlink(missing_ok=True)


def _take_over(path: Path) -> bool:
    """Remove the claim at `path` if it is abandoned, and only that claim: True if the path is free now. Two jobs
    may judge one dead claim at once; the slower must not then remove the claim the faster has just made. So the
    judged file is moved aside and dropped only if it is the file judged (same inode and mtime); else put back."""
    try:
        judged = _identity(path.stat())
    except OSError:
        return True  # gone meanwhile
    if not _abandoned(path):
        return False
    aside = path.with_name(f".{path.name}.{os.getpid()}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # another job removed it first
    if _identity(aside.stat()) == judged:
        aside.unlink()
        return True
    try:  # a live claim made since the judgement: put it back, unless a third job has claimed meanwhile
        os.link(aside, path)
    except FileExistsError:
        pass
    aside.unlink()
    return False


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_ino, stat.st_mtime_ns  # the inode alone: a new file may reuse a removed one's number


def _abandoned(path: Path) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return True  # gone meanwhile: free to claim
    try:
        host, pid = path.read_text().split()
    except (OSError, ValueError):  # empty: its writer is between creating and writing it, or died there
        return age > UNWRITTEN_CLAIM_SECONDS
    if host != socket.gethostname():
        return age > STALE_CLAIM_SECONDS
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

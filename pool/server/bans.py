"""Bans that survive a restart: ``DATA/bans.json``, written atomically after every change.

Format (version 1)::

    {"version": 1, "ips": ["10.0.0.7"], "workers": ["bcrt1q....rig1", "bcrt1q..."]}

A missing file is no bans. A file that cannot be read or understood stops the start-up with a
message naming it: silently dropping an operator's bans would let banned miners back in.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BANS_VERSION = 1


class BansFileError(ValueError):
    """The bans file exists but is not a bans file this pool understands."""


@dataclass
class Bans:
    ips: set[str] = field(default_factory=set)
    workers: set[str] = field(default_factory=set)

    def to_json(self) -> str:
        return json.dumps(
            {"version": BANS_VERSION, "ips": sorted(self.ips), "workers": sorted(self.workers)},
            indent=1,
        )


def load_bans(path: Path) -> Bans:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Bans()
    except (OSError, UnicodeDecodeError) as exc:
        raise BansFileError(f"{path}: cannot read the bans file: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BansFileError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != BANS_VERSION:
        raise BansFileError(f"{path}: not a version-{BANS_VERSION} bans file")
    bans = Bans()
    for key, target in (("ips", bans.ips), ("workers", bans.workers)):
        values = data.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise BansFileError(f"{path}: {key!r} must be a list of non-empty strings")
        target.update(values)
    unknown = set(data) - {"version", "ips", "workers"}
    if unknown:
        raise BansFileError(f"{path}: unknown keys {sorted(unknown)}")
    return bans


def save_bans(path: Path, bans: Bans) -> None:
    """Write atomically: a temporary file of its own, fsync, rename over the old one, fsync the
    folder. A crash leaves either the old or the new list, never a torn one. Callers serialise
    their saves (the API holds a lock), so an older list never replaces a newer one."""
    data = (bans.to_json() + "\n").encode()
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

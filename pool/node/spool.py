"""Found blocks kept on disk until bitcoind has settled them.

A block candidate is written here (``DATA/blocks/<height>-<hash>.block``, the raw block,
fsynced, renamed into place) before its first ``submitblock`` and removed once bitcoind has
settled it. A pool that stops (or is killed) while bitcoind is away therefore still has the
block at its next start, and submits it again then: a found block is never only in memory.

A file whose header does not hash to its name (a torn write, a hand edit) is moved aside as
``*.bad`` with an error line, never submitted. Disk errors never stop a submission: the block
is still submitted from memory, and the failure is logged.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from pool.bitcoin import hash_to_display, sha256d

log = structlog.get_logger("pool.node.spool")

SUFFIX = ".block"
HEADER_BYTES = 80


@dataclass(frozen=True, slots=True)
class SpooledBlock:
    height: int
    block_hash: str
    block: bytes


def block_hash_of(block: bytes) -> str:
    """The display (big-endian hex) hash of a serialized block's header."""
    return hash_to_display(sha256d(block[:HEADER_BYTES]))


class BlockSpool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, height: int, block_hash: str) -> Path:
        return self.directory / f"{height}-{block_hash}{SUFFIX}"

    def keep(self, height: int, block_hash: str, block: bytes) -> bool:
        """Write the block durably; False (logged) when the disk refuses."""
        path = self._path(height, block_hash)
        tmp = path.with_suffix(".tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as f:
                f.write(block)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            log.error(
                "block_spool_write_failed",
                height=height,
                hash=block_hash,
                error=str(exc),
                note="the block is still submitted from memory",
            )
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        return True

    def drop(self, height: int, block_hash: str) -> None:
        """The block is settled: forget it."""
        try:
            self._path(height, block_hash).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("block_spool_remove_failed", hash=block_hash, error=str(exc))

    def load(self) -> list[SpooledBlock]:
        """The blocks left by an earlier run, lowest height first (a block may build on one)."""
        if not self.directory.is_dir():
            return []
        found: list[SpooledBlock] = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            height_text, _, block_hash = path.stem.partition("-")
            try:
                block = path.read_bytes()
                height = int(height_text)
            except (OSError, ValueError) as exc:
                self._set_aside(path, f"unreadable: {exc}")
                continue
            if len(block) <= HEADER_BYTES or block_hash_of(block) != block_hash:
                self._set_aside(path, "its header does not hash to its name")
                continue
            found.append(SpooledBlock(height, block_hash, block))
        found.sort(key=lambda b: b.height)
        return found

    @staticmethod
    def _set_aside(path: Path, why: str) -> None:
        log.error("block_spool_file_bad", file=path.name, reason=why, note="moved aside (.bad)")
        with contextlib.suppress(OSError):
            path.rename(path.with_suffix(".bad"))

"""Find a regtest-capable ``bitcoind`` (and ``bitcoin-cli``); fetch one when the machine has none.

Discovery order, first hit wins:

1. ``$BITCOIND`` (``$BITCOIN_CLI`` for the CLI): an explicit path to a binary;
2. ``bitcoind`` on ``PATH``;
3. the project's cached copy under the cache folder (``$POOL_BITCOIND_CACHE``, default
   ``.cache/bitcoind`` in the source checkout, else ``~/.cache/stratum-pool/bitcoind``);
4. fetch: Bitcoin Knots (a Bitcoin Core derivative: same daemon, RPC and regtest) from Debian's
   archive. Debian ships it only in ``sid`` and it needs newer runtime libraries than bookworm
   has, so the package and its libraries (from ``trixie``) are downloaded with ``apt-get download``
   using an apt state of our own (nothing on the system changes), unpacked with ``dpkg-deb -x``
   into one folder, and run through that folder's own dynamic loader by a small wrapper script.

The fetch is idempotent and guarded by a lock file; a second call finds the cached copy.
``python -m pool.node.binaries ensure`` is what ``make`` runs.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Packages fetched into the cache: (package, suite). Knots is in sid only; its runtime
# libraries come from trixie (glibc >= 2.38, libstdc++ from gcc 14, the t64 libevent packages).
KNOTS_PACKAGE = ("bitcoin-knots", "sid")
RUNTIME_PACKAGES = tuple(
    (name, "trixie")
    for name in (
        "libc6",
        "libgcc-s1",
        "libstdc++6",
        "libevent-core-2.1-7t64",
        "libevent-extra-2.1-7t64",
        "libevent-pthreads-2.1-7t64",
        "libzmq5",
        "libsodium23",
        "libpgm-5.3-0t64",
        "libnorm1t64",
        "libbsd0",
        "libmd0",
        "libsqlite3-0",
        "libgssapi-krb5-2",
        "libkrb5-3",
        "libk5crypto3",
        "libkrb5support0",
        "libcom-err2",
        "libkeyutils1",
        "libssl3t64",
    )
)
DEFAULT_ARCHIVE = "http://deb.debian.org/debian"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
LIB_SUBDIR = "usr/lib/x86_64-linux-gnu"


class BitcoindNotFound(RuntimeError):
    """No usable bitcoind and it could not be fetched; the message says why and what to do."""


@dataclass(frozen=True)
class Binaries:
    bitcoind: Path
    bitcoin_cli: Path | None
    source: str  # "env", "path", "cache" or "fetched"
    version: str


def default_cache_dir() -> Path:
    env = os.environ.get("POOL_BITCOIND_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        return checkout / ".cache" / "bitcoind"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "stratum-pool" / "bitcoind"


def binary_version(path: Path) -> str:
    """First line of ``path -version``; raises BitcoindNotFound if it does not run."""
    try:
        out = subprocess.run(
            [str(path), "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        raise BitcoindNotFound(f"{path} does not run: {exc}") from exc
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        detail = " | ".join(tail)
        raise BitcoindNotFound(f"{path} -version failed (exit {out.returncode}): {detail}")
    lines = out.stdout.strip().splitlines()
    return lines[0] if lines else "unknown version"


def _candidates(name: str, env_var: str, cache: Path) -> Iterator[tuple[Path, str]]:
    env = os.environ.get(env_var)
    if env:
        yield Path(env), "env"
    on_path = shutil.which(name)
    if on_path:
        yield Path(on_path), "path"
    cached = cache / "bin" / name
    if cached.exists():
        yield cached, "cache"


def find(cache: Path | None = None) -> Binaries | None:
    """The first working bitcoind in discovery order, or None. ``$BITCOIND`` that does not work
    is an error (the user asked for it), not a reason to fall through silently."""
    cache = cache or default_cache_dir()
    for path, source in _candidates("bitcoind", "BITCOIND", cache):
        try:
            version = binary_version(path)
        except BitcoindNotFound:
            if source == "env":
                raise
            continue
        cli = next((p for p, _ in _candidates("bitcoin-cli", "BITCOIN_CLI", cache)), None)
        return Binaries(bitcoind=path, bitcoin_cli=cli, source=source, version=version)
    return None


def _archive_source() -> tuple[str, str]:
    """The archive URI and keyring of the machine's own Debian entry (falls back to defaults)."""
    for candidate in (
        Path("/etc/apt/sources.list.d/debian.sources"),
        Path("/etc/apt/sources.list"),
    ):
        try:
            text = candidate.read_text()
        except OSError:
            continue
        uri = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or re.search(
            r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)\s+\S+", text, re.M
        )
        key = re.search(r"^Signed-By:\s*(\S+)\s*$", text, re.M) or re.search(
            r"signed-by=([^\s\]]+)", text
        )
        if uri:
            return uri.group(1), key.group(1) if key else DEFAULT_KEYRING
    return DEFAULT_ARCHIVE, DEFAULT_KEYRING


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], what: str) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        tail = " | ".join((out.stderr or out.stdout).strip().splitlines()[-4:])
        raise BitcoindNotFound(
            f"{what} failed (exit {out.returncode}): {tail}. Debian's archive could not be used; "
            "install bitcoind yourself and set BITCOIND=/path/to/bitcoind, or put it on PATH."
        )


def _write_wrapper(root: Path, name: str) -> Path:
    """A shell wrapper that runs ``name`` through the unpacked tree's own loader and libraries."""
    bin_dir = root.parent / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / name
    wrapper.write_text(
        "#!/bin/sh\n"
        "# Generated by pool.node.binaries: runs Debian's binary with its own runtime libraries.\n"
        'here="$(cd "$(dirname "$0")/.." && pwd)/root"\n'
        f'exec "$here/{LIB_SUBDIR}/ld-linux-x86-64.so.2" --library-path "$here/{LIB_SUBDIR}" '
        f'"$here/usr/bin/{name}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def fetch(cache: Path | None = None) -> Binaries:
    """Download Bitcoin Knots and its runtime libraries from Debian's archive into ``cache``."""
    cache = cache or default_cache_dir()
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise BitcoindNotFound(
            "no bitcoind found and this machine has no apt-get/dpkg-deb to fetch one; "
            "set BITCOIND=/path/to/bitcoind or put bitcoind on PATH"
        )
    with _lock(cache / ".lock"):
        existing = find(cache)
        if existing is not None and existing.source == "cache":
            return existing
        uri, keyring = _archive_source()
        apt = cache / "apt"
        debs = cache / "debs"
        root = cache / "root"
        for d in (apt / "lists" / "partial", apt / "cache" / "archives" / "partial", debs):
            d.mkdir(parents=True, exist_ok=True)
        sources = apt / "sources.list"
        sources.write_text(
            f"deb [signed-by={keyring}] {uri} sid main\n"
            f"deb [signed-by={keyring}] {uri} trixie main\n"
        )
        opts = [
            f"-o=Dir::Etc::sourcelist={sources}",
            "-o=Dir::Etc::sourceparts=/dev/null",
            f"-o=Dir::State::Lists={apt / 'lists'}",
            f"-o=Dir::Cache={apt / 'cache'}",
            "-o=APT::Sandbox::User=root",
            "-o=Debug::NoLocking=1",
            "-q",
        ]
        print(f"fetching Bitcoin Knots from {uri} (sid + trixie) into {cache}", file=sys.stderr)
        _run(["apt-get", *opts, "update"], f"apt-get update against {uri}")
        wanted = [f"{n}/{s}" for n, s in (KNOTS_PACKAGE, *RUNTIME_PACKAGES)]
        out = subprocess.run(
            ["apt-get", *opts, "download", *wanted],
            capture_output=True,
            text=True,
            cwd=debs,
            check=False,
        )
        if out.returncode != 0:
            tail = " | ".join(out.stderr.strip().splitlines()[-4:])
            raise BitcoindNotFound(f"apt-get download failed: {tail}")
        if root.exists():
            shutil.rmtree(root)
        root.mkdir()
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")
        bitcoind = _write_wrapper(root, "bitcoind")
        cli = _write_wrapper(root, "bitcoin-cli")
        version = binary_version(bitcoind)
        shutil.rmtree(debs, ignore_errors=True)
        return Binaries(bitcoind=bitcoind, bitcoin_cli=cli, source="fetched", version=version)


def ensure(cache: Path | None = None) -> Binaries:
    """A working bitcoind: found in discovery order, else fetched."""
    found = find(cache)
    return found if found is not None else fetch(cache)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["ensure"], ["find"]):
        print("usage: python -m pool.node.binaries [ensure|find]", file=sys.stderr)
        return 2
    try:
        found = find() if args == ["find"] else ensure()
    except BitcoindNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if found is None:
        print("no bitcoind found", file=sys.stderr)
        return 1
    print(f"bitcoind: {found.bitcoind} ({found.source}): {found.version}")
    print(f"bitcoin-cli: {found.bitcoin_cli or 'not found'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

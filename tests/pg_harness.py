"""A real PostgreSQL for the tests: Debian's server binaries, a cluster made by ``initdb`` in a
temporary directory, on a free port, its unix socket in that directory, stopped at the end.

PostgreSQL refuses to run as root (and CI runs as root): the cluster then belongs to the
unprivileged ``nobody`` user and every server command runs as it (``setpriv``). Its superuser
``pool`` has a password (TCP connections need it: scram-sha-256); the unix socket trusts local
connections. ``make test`` installs the server (``make postgres``); where no binaries can be
found, the tests that need them are skipped with that reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

PG_USER = "pool"
PG_PASSWORD = "pool-test-secret"  # the test cluster's own; passed through POOL_PG_PASSWORD
RUN_AS = "nobody"


def find_bindir() -> Path | None:
    """The newest installed server's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    found = []
    for candidate in glob.glob("/usr/lib/postgresql/*/bin"):
        try:
            found.append((int(Path(candidate).parent.name), Path(candidate)))
        except ValueError:
            continue
    for _, path in sorted(found, reverse=True):
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(os.path.realpath(initdb)).parent
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in a temporary directory (see the module's docstring)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="pool-pg-"))  # /tmp: reachable by RUN_AS
        self.data = self.root / "data"
        self.socket_dir = self.root
        self.log = self.root / "server.log"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam(RUN_AS)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = [
                "setpriv",
                f"--reuid={user.pw_uid}",
                f"--regid={user.pw_gid}",
                "--clear-groups",
                "--",
            ]

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        return subprocess.run(
            [*self._as, *args],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(PG_PASSWORD + "\n")
        if self._as:
            user = pwd.getpwnam(RUN_AS)
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            PG_USER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        pwfile.unlink()

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        result = self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start: {result.stderr}\n{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        """``mode``: fast (clients disconnected, clean) or immediate (like a crash)."""
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False
        )

    def running(self) -> bool:
        result = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "status", check=False)
        return result.returncode == 0

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def cleanup(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases ------------------------------------------------------------------------
    def admin_dsn(self, database: str = "postgres") -> str:
        """Over the unix socket (trusted): for the harness's own statements."""
        return f"host={self.socket_dir} port={self.port} user={PG_USER} dbname={database}"

    def dsn(self, database: str) -> str:
        """What the pool is configured with: a URL over TCP, without the password."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        import psycopg

        name = name or f"ledger_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


OWNER_FILE = "owner.pid"  # the test process that started the cluster


def remove_orphans(bindir: Path) -> int:
    """Stop and remove clusters left by test processes that died without their teardown (a
    killed pytest): their ``owner.pid`` is no longer alive. Returns how many."""
    removed = 0
    for root in Path(tempfile.gettempdir()).glob("pool-pg-*"):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(owner, 0)
            continue  # alive: another test session's cluster
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        orphan = PgServer.__new__(PgServer)
        orphan.bindir, orphan.root, orphan.data = bindir, root, root / "data"
        orphan.socket_dir, orphan.log = root, root / "server.log"
        orphan._as = []
        if os.geteuid() == 0:
            user = pwd.getpwnam(RUN_AS)
            orphan._as = [
                "setpriv",
                f"--reuid={user.pw_uid}",
                f"--regid={user.pw_gid}",
                "--clear-groups",
                "--",
            ]
        orphan.cleanup()
        removed += 1
    return removed


@contextlib.contextmanager
def running_server() -> Iterator[PgServer]:
    """A started cluster, stopped and removed at the end. Raises LookupError without one."""
    bindir = find_bindir()
    if bindir is None:
        raise LookupError(
            "PostgreSQL's server binaries are not installed (make test installs Debian's "
            "postgresql package: make postgres)"
        )
    remove_orphans(bindir)
    server = PgServer(bindir)
    (server.root / OWNER_FILE).write_text(str(os.getpid()))
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.cleanup()

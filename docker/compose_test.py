"""Run docker/compose.yaml for real: build, start, wait for a credited share and a block, stop.

    python3 docker/compose_test.py wheels   # only the pool's wheels, into docker/wheels
    python3 docker/compose_test.py test     # wheels, build, up -d, wait, down (what
                                            # `make compose-test` runs)

The engine is podman (with podman-compose) when it is installed, else Docker (with
``docker compose``); ``--engine`` chooses. ``--setup-podman`` first runs
docker/setup-podman.sh when podman is missing (Debian, root).

Wheels: the pool and its dependencies for the *image's* Python and platform, made on the host
(``pip wheel`` for the pool, ``pip download --only-binary=:all:`` for the rest), so the image
build needs no network: the image's Python version and glibc are asked of the base image.

What ``test`` checks, each against the real services:
1. the images build (the pool from the wheels; bitcoind from Debian's archive);
2. the stack comes up (``up -d``) and the pool's HTTP API answers on the published port;
3. the miner's worker (a fresh regtest address) has an accepted share credited in the ledger
   (``/api/workers``: ``shares.accepted``, ``ledger.shares`` and ``ledger.earned_units`` above 0);
4. a block found by the pool (``/api/blocks``) is in bitcoind's chain (``bitcoin-cli
   getblockheader`` run in the bitcoind service: at least one confirmation);
then ``down -v`` always (on failure too, after printing every service's logs).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DOCKER_DIR = Path(__file__).resolve().parent
ROOT = DOCKER_DIR.parent
WHEELS = DOCKER_DIR / "wheels"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
PROJECT = "stratum-pool-test"
# Base images: a registry's by default; locally built ones (setup-podman.sh) when present.
LOCAL_PYTHON = "localhost/local/python:slim"
LOCAL_DEBIAN = "localhost/local/debian:stable"
REGISTRY_PYTHON = "python:3.12-slim"
REGISTRY_DEBIAN = "debian:trixie-slim"


class Failed(RuntimeError):
    """A check failed; the message says which and what was seen."""


def log(text: str) -> None:
    print(f"[compose-test {time.strftime('%H:%M:%S')}] {text}", flush=True)


def run(cmd: list[str], *, env: dict[str, str] | None = None, check: bool = True) -> str:
    log("$ " + " ".join(cmd))
    out = subprocess.run(cmd, env=env, cwd=ROOT, text=True, capture_output=True, check=False)
    if check and out.returncode != 0:
        sys.stdout.write(out.stdout[-4000:])
        sys.stderr.write(out.stderr[-4000:])
        raise Failed(f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} failed (exit {out.returncode})")
    return out.stdout


def stream(cmd: list[str], *, env: dict[str, str] | None = None) -> None:
    """Run with the output shown as it comes (builds are long)."""
    log("$ " + " ".join(cmd))
    code = subprocess.run(cmd, env=env, cwd=ROOT, check=False).returncode
    if code != 0:
        raise Failed(f"{' '.join(cmd[:3])} failed (exit {code})")


# -- engine ---------------------------------------------------------------------------------------
def choose_engine(wanted: str, setup: bool) -> str:
    if wanted == "auto":
        if shutil.which("podman"):
            wanted = "podman"
        elif shutil.which("docker"):
            wanted = "docker"
        elif setup:
            wanted = "podman"
        else:
            raise Failed(
                "neither podman nor docker is installed: install one, or on Debian as root run "
                "`make compose-test SETUP_PODMAN=1` (runs docker/setup-podman.sh)"
            )
    if wanted == "podman" and not (shutil.which("podman") and shutil.which("podman-compose")):
        if not setup:
            raise Failed(
                "podman and podman-compose are needed: install them, or on Debian as root run "
                "`make compose-test SETUP_PODMAN=1` (runs docker/setup-podman.sh)"
            )
        stream(["sh", str(DOCKER_DIR / "setup-podman.sh")])
    if wanted == "docker" and not shutil.which("docker"):
        raise Failed("docker is not installed")
    return wanted


def compose_cmd(engine: str) -> list[str]:
    base = ["podman-compose"] if engine == "podman" else ["docker", "compose"]
    return [*base, "-p", PROJECT, "-f", str(COMPOSE_FILE)]


def image_exists(engine: str, image: str) -> bool:
    cmd = [engine, "image", "inspect", image]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def base_images(engine: str) -> tuple[str, str]:
    """BASE_IMAGE and DEBIAN_IMAGE: the environment's, else local builds, else a registry's."""
    python = os.environ.get("BASE_IMAGE") or (
        LOCAL_PYTHON if image_exists(engine, LOCAL_PYTHON) else REGISTRY_PYTHON
    )
    debian = os.environ.get("DEBIAN_IMAGE") or (
        LOCAL_DEBIAN if image_exists(engine, LOCAL_DEBIAN) else REGISTRY_DEBIAN
    )
    return python, debian


# -- wheels ---------------------------------------------------------------------------------------
PROBE = (
    "import json, platform, sys; "
    "print(json.dumps({'python': '%d%d' % sys.version_info[:2], "
    "'glibc': platform.libc_ver()[1], 'machine': platform.machine()}))"
)


def image_python(engine: str, image: str) -> dict[str, str]:
    out = run([engine, "run", "--rm", "--entrypoint", "python3", image, "-c", PROBE])
    info: dict[str, str] = json.loads(out.strip().splitlines()[-1])
    if not info.get("glibc"):
        raise Failed(f"{image}: no glibc found (a glibc-based image is needed for the wheels)")
    return info


def manylinux_platforms(glibc: str, machine: str) -> list[str]:
    major, minor = (int(x) for x in glibc.split(".")[:2])
    if major != 2 or minor < 17:
        raise Failed(f"glibc {glibc} is too old for manylinux wheels (2.17 or newer needed)")
    tags = [f"manylinux_2_{m}_{machine}" for m in range(minor, 4, -1)]
    legacy = [f"manylinux{name}_{machine}" for name in ("2014", "2010", "1")]
    return [*tags, *legacy, "linux_" + machine]


def build_wheels(engine: str, base_image: str) -> None:
    """The pool's wheel and its dependencies' wheels for ``base_image``'s Python, in WHEELS."""
    info = image_python(engine, base_image)
    py, machine = info["python"], info["machine"]
    log(f"{base_image}: CPython {py[0]}.{py[1:]}, glibc {info['glibc']}, {machine}")
    if WHEELS.exists():
        shutil.rmtree(WHEELS)
    WHEELS.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(WHEELS), str(ROOT)])
    built = sorted(WHEELS.glob("stratum_pool-*.whl"))
    if not built:
        raise Failed("pip wheel made no stratum_pool wheel")
    target = ["--python-version", py, "--implementation", "cp"]
    target += [a for abi in (f"cp{py}", "abi3", "none") for a in ("--abi", abi)]
    target += [
        a for tag in manylinux_platforms(info["glibc"], machine) for a in ("--platform", tag)
    ]
    target += ["--platform", "any"]
    download = [*pip, "download", "--quiet", "--only-binary=:all:", *target]
    run([*download, "--dest", str(WHEELS), str(built[-1])])
    names = sorted(p.name for p in WHEELS.glob("*.whl"))
    log(f"{len(names)} wheels in {WHEELS.relative_to(ROOT)}: {', '.join(names)}")


# -- the run --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def regtest_address() -> str:
    """A fresh P2WPKH regtest address (random key hash: nobody needs to spend regtest coins)."""
    sys.path.insert(0, str(ROOT))
    from pool.bitcoin.address import encode_segwit

    return encode_segwit("bcrt", 0, secrets.token_bytes(20))


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def wait_for(what: str, probe: Any, timeout: float, interval: float = 2.0) -> Any:
    """Poll ``probe()`` until it returns something true; its last error or value on timeout."""
    log(f"waiting (up to {timeout:.0f} s) for {what}")
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, ValueError, urllib.error.URLError) as exc:
            value, last = None, exc
        else:
            last = value
        if value:
            log(f"ok: {what}")
            return value
        time.sleep(interval)
    raise Failed(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {last!r}")


def credited_share(api: str, worker: str) -> dict[str, Any] | None:
    for row in get_json(f"{api}/api/workers?limit=1000")["workers"]:
        if row["name"] != worker:
            continue
        ledger = row["ledger"]
        if row["shares"]["accepted"] > 0 and ledger["shares"] > 0 and ledger["earned_units"] > 0:
            return dict(row)
    return None


def found_block(api: str) -> dict[str, Any] | None:
    blocks = get_json(f"{api}/api/blocks")["blocks"]
    return dict(blocks[-1]) if blocks else None


def check_stack(
    compose: list[str], env: dict[str, str], api: str, worker: str, timeout: float
) -> None:
    pool = wait_for("the pool's API (/api/pool)", lambda: get_json(f"{api}/api/pool"), timeout)
    log(f"/api/pool: {json.dumps(pool)[:300]}")
    row = wait_for(f"a credited share of {worker}", lambda: credited_share(api, worker), timeout)
    log(
        f"worker {worker}: {row['shares']['accepted']} accepted, ledger {row['ledger']['shares']} "
        f"shares, earned {row['ledger']['earned_btc']} BTC (PPS)"
    )
    block = wait_for("a block found by the pool (/api/blocks)", lambda: found_block(api), timeout)
    log(f"block {block['height']} {block['hash']} by {block['worker']}: {block['status']}")
    cli = [*compose, "exec", "-T", "bitcoind", "bitcoin-cli", "-conf=/etc/bitcoin/bitcoin.conf"]
    cli.append("-datadir=/bitcoin")
    header = json.loads(run([*cli, "getblockheader", block["hash"]], env=env))
    if header.get("confirmations", 0) < 1:
        raise Failed(f"block {block['hash']} is not in bitcoind's best chain: {header}")
    log(f"bitcoind has block {header['height']} {header['hash']} ({header['confirmations']} conf)")


def compose_test(engine: str, timeout: float, keep: bool, no_cache: bool) -> None:
    started = time.monotonic()
    base_image, debian_image = base_images(engine)
    build_wheels(engine, base_image)
    address = regtest_address()
    api_port, stratum_port = free_port(), free_port()
    env = {
        **os.environ,
        "BASE_IMAGE": base_image,
        "DEBIAN_IMAGE": debian_image,
        "MINER_ADDRESS": address,
        "POOL_API_PORT": str(api_port),
        "POOL_STRATUM_PORT": str(stratum_port),
    }
    compose = compose_cmd(engine)
    log(f"engine {engine}; BASE_IMAGE={base_image} DEBIAN_IMAGE={debian_image}")
    stream([*compose, "build", *(["--no-cache"] if no_cache else [])], env=env)
    built = time.monotonic()
    log(f"images built in {built - started:.0f} s")
    ok = False
    try:
        run([*compose, "down", "-v"], env=env, check=False)  # leftovers of an aborted run
        stream([*compose, "up", "-d"], env=env)
        check_stack(compose, env, f"http://127.0.0.1:{api_port}", f"{address}.docker", timeout)
        ok = True
    finally:
        if not ok:
            log("FAILED: the services' logs follow")
            for service in ("bitcoind", "pool", "miner"):
                print(f"----- {service} -----", flush=True)
                subprocess.run([*compose, "logs", "--tail", "150", service], env=env, check=False)
        if keep and ok:
            log(f"left running (--keep): {' '.join(compose)} down -v")
        else:
            run([*compose, "down", "-v"], env=env, check=False)
    total, stack = time.monotonic() - started, time.monotonic() - built
    log(f"PASSED in {total:.0f} s (images {built - started:.0f} s, stack {stack:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("wheels", "test"))
    p.add_argument("--engine", choices=("auto", "podman", "docker"), default="auto")
    p.add_argument("--setup-podman", action="store_true", help="install podman when missing")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for each wait")
    p.add_argument("--keep", action="store_true", help="leave a passing stack running")
    p.add_argument("--no-cache", action="store_true", help="build the images from scratch")
    args = p.parse_args(argv)
    try:
        engine = choose_engine(args.engine, args.setup_podman)
        if args.action == "wheels":
            build_wheels(engine, base_images(engine)[0])
        else:
            compose_test(engine, args.timeout, args.keep, args.no_cache)
    except Failed as exc:
        log(f"FAILED: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

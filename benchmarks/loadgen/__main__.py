"""Entry point: ``python -m benchmarks.loadgen '<JSON spec>'`` (see the package docstring)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from benchmarks.loadgen.common import Spec, emit, raise_nofile
from benchmarks.loadgen.generator import Generator
from benchmarks.loadgen.modes import mode_api, mode_fanout, mode_flood, mode_idle


async def main_async(spec: Spec) -> dict[str, Any]:
    gen = Generator(spec)
    mode = spec["mode"]
    if mode == "flood":
        return await mode_flood(gen, spec)
    if mode == "idle":
        return await mode_idle(gen, spec)
    if mode == "api":
        return await mode_api(gen, spec)
    if mode == "fanout":
        reader = asyncio.StreamReader()
        await gen.loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
        )
        return await mode_fanout(gen, spec, reader)
    raise SystemExit(f"unknown mode {mode!r}")


def main(argv: Iterable[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    spec: Spec = json.loads(args[0])
    limit = raise_nofile()
    started = time.process_time()
    result = asyncio.run(main_async(spec))
    result["loadgen_nofile_limit"] = limit
    result["loadgen_cpu_seconds_total"] = round(time.process_time() - started, 3)
    result["loadgen_affinity"] = sorted(os.sched_getaffinity(0))
    emit("result", **result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

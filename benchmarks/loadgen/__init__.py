"""The load generator: a process of its own (the runner pins it to a core of its own) that talks
to the pool only as miners and HTTP clients do, over TCP.

    python -m benchmarks.loadgen '<JSON spec>'

It writes JSON lines on stdout (``{"event": ...}``; the last one is ``{"event": "result", ...}``)
and reads JSON commands on stdin where a scenario needs the runner (``fanout``: a block was
mined). It imports nothing of the pool: only the standard library, so it measures what a
miner sees.

Built not to be the bottleneck: asyncio Protocols (no StreamReader), request lines formatted
from pre-encoded templates with one ``bytes % args`` each, all requests made due by one read
written with one ``write``, answers counted by newline and told apart by a byte search
(``"result":true``) instead of a JSON parse; the few lines that must be read (handshakes,
notifies, sampled rejects, timed answers) are parsed with ``json``. Every mode reports the
generator's own CPU use (``time.process_time``) so a saturated generator shows.
"""

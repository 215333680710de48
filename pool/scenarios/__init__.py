"""End-to-end regtest scenarios: a managed bitcoind, the pool with a simulated network
difficulty, real miners joining and leaving on a timeline, and a report (JSON + HTML).

- ``spec``: scenario TOML files (built-ins in ``builtin/``) -> a validated ``ScenarioSpec``;
- ``runner``: runs one (I/O: processes, sockets, the pool in-process);
- ``report`` / ``econ``: the pure report builder (a ``Recording`` -> report dict);
- ``html`` / ``svg``: the self-contained HTML page with inline SVG plots (pure).
"""

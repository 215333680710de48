"""End-to-end regtest scenarios: a managed bitcoind, the pool with a simulated network
difficulty, real miners joining and leaving on a timeline, and a report (JSON + HTML).

- ``spec``: scenario TOML files (built-ins in ``builtin/``) -> a validated ``ScenarioSpec``;
- ``runner``: runs one (I/O: processes, sockets, the pool in-process);
- ``report`` / ``econ``: the pure report builder (a ``Recording`` -> report dict);
- ``html`` / ``svg``: the self-contained HTML page with inline SVG plots (pure);
- ``schemes_*``: PPS, FPPS, PPLNS and SOLO compared on the run's own shares and blocks
  (``schemes_input`` reads the journal and the store; ``schemes_compare``, ``schemes_mc``,
  ``schemes_report`` and ``schemes_html`` are pure).
"""

"""Buffered log output: info lines batched, warnings written at once with what came before."""

from __future__ import annotations

import io
import json

import structlog

from pool import logs


def test_info_is_buffered_and_warning_flushes_in_order() -> None:
    out = io.StringIO()
    logger = logs.BufferedLogger(out)  # no flusher thread: only the logger's own rules
    logger.info('{"event": "first"}')
    logger.info('{"event": "second"}')
    assert out.getvalue() == ""  # not written line by line
    logger.warning('{"event": "third"}')
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == [
        "first",
        "second",
        "third",
    ]
    logger.info('{"event": "fourth"}')
    logger.flush()
    assert json.loads(out.getvalue().splitlines()[-1])["event"] == "fourth"


def test_a_full_buffer_is_written_without_waiting() -> None:
    out = io.StringIO()
    logger = logs.BufferedLogger(out)
    line = "x" * 99
    count = logs.FLUSH_BYTES // 100 + 10
    for _ in range(count):
        logger.info(line)
    assert out.getvalue().count("\n") >= logs.FLUSH_BYTES // 100
    logger.flush()
    assert out.getvalue().count("\n") == count


def test_configured_logging_reaches_the_stream() -> None:
    out = io.StringIO()
    logs.configure("info", "json", out)
    structlog.get_logger("t").error("boom", n=1)  # errors are written at once
    assert json.loads(out.getvalue().splitlines()[-1])["event"] == "boom"
    structlog.get_logger("t").info("later")
    logs.flush()
    assert json.loads(out.getvalue().splitlines()[-1])["event"] == "later"

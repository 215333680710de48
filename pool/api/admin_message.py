"""POST /api/admin/message: ``client.show_message`` to one worker's connections or to all.

Body: ``{"message": "text", "worker": "ADDRESS[.worker]"}`` (``worker`` optional: without it
every subscribed miner gets the message; a bare address reaches all its workers). The text is
at most ``api.max_message_chars`` characters, not blank, without control characters (a miner
prints it in its log: a newline or an escape sequence would forge log lines or terminal
output). The answer says how many connections got it; a named worker with no connection is a
404.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import structlog

from pool.api.views import ApiError, Views
from pool.logs import clip

log = structlog.get_logger("pool.api")

FIELDS = frozenset({"message", "worker"})


def check_message(value: Any, limit: int) -> str:
    """The message text, or a 400 saying what is wrong with it."""
    if not isinstance(value, str):
        raise ApiError(400, 'the body must be {"message": "<text>", "worker": optional}')
    if not value.strip():
        raise ApiError(400, "message must not be blank")
    if len(value) > limit:
        raise ApiError(
            400,
            f"message is {len(value)} characters, longer than api.max_message_chars ({limit})",
            max_message_chars=limit,
        )
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None:
        raise ApiError(
            400,
            f"message must not contain control characters (found U+{ord(bad):04X}): "
            "one line of text",
        )
    return value


def send_message(
    views: Views, body: dict[str, Any], limit: int, peer: str | None
) -> dict[str, Any]:
    """Validate ``body`` and send the message; the JSON answer."""
    unknown = set(body) - FIELDS
    if unknown:
        raise ApiError(400, f"unknown field(s) {sorted(unknown)}: only message and worker")
    text = check_message(body.get("message"), limit)
    worker = body.get("worker")
    if worker is not None:
        if not isinstance(worker, str):
            raise ApiError(400, "worker must be a string")
        worker = views.check_worker(worker)
    server = views.parts().server
    sent = server.show_message(text, worker)
    log.warning(
        "api_show_message",
        worker=worker or "(all)",
        connections=sent,
        chars=len(text),
        message=clip(text, 80),
        peer=peer,
    )
    if worker is not None and not sent:
        raise ApiError(404, f"no connection of worker {worker} to send to", worker=worker, sent=0)
    return {"sent": sent, "worker": worker, "chars": len(text)}

"""The JSON body of an admin request: an object, or a 400 saying what is wrong with it."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from pool.api.views import ApiError


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object ({} for an empty body)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "the body is not JSON") from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body

"""Opaque cursors: URL-safe base64 of a small JSON list of strings (the last row's sort key)."""

from __future__ import annotations

import base64
import binascii
import json

from api.errors import VALIDATION_ERROR, ApiProblem

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
_MAX_CURSOR_CHARS = 1024


def encode_cursor(*parts: str) -> str:
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, parts: int) -> list[str]:
    """The strings encoded by ``encode_cursor``; a 422 ``validation_error`` for anything else."""
    try:
        if len(cursor) > _MAX_CURSOR_CHARS:
            raise ValueError("too long")
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        value = None
    if (
        not isinstance(value, list)
        or len(value) != parts
        or not all(isinstance(v, str) and "\x00" not in v for v in value)
    ):
        raise ApiProblem(422, VALIDATION_ERROR, "cursor is not valid", extra={"param": "cursor"})
    return value

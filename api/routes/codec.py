"""The codec endpoint: the Temporal web UI and CLI show decrypted payloads to operators.

``POST /codec/decode`` and ``POST /codec/encode`` take and return Temporal's JSON form of
``Payloads`` (``{"payloads": [{"metadata": {"encoding": "<base64>"}, "data": "<base64>"}]}``),
as a Temporal remote codec server does: point the UI at it (``temporal server start-dev
--ui-codec-endpoint http://127.0.0.1:8000/codec``, which ``tradeflow up`` does) or the CLI
(``temporal workflow show -w order-... --codec-endpoint http://127.0.0.1:8000/codec``).

Operators only: ``X-Admin-Token`` or an operator JWT (``Authorization: Bearer``, which is what
a UI behind single sign-on forwards), and open like every route when authentication is off.
CORS answers only the configured UI origins (``TRADEFLOW_CODEC_CORS_ORIGINS``, default the dev
server's UI) and only on ``/codec/*``; the rest of the API is unchanged. The key ring is the one
the API's own Temporal client uses (``infra.codec``); the ``X-Namespace`` header the UI sends
is accepted and ignored (one ring for the namespace tradeflow runs in).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, FastAPI, Request
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.api.common.v1 import Payload, Payloads

from api.auth import OperatorDep
from api.errors import VALIDATION_ERROR, ApiProblem
from api.openapi import problems
from infra.codec import CodecKeyError, EncryptionCodec, codec_for
from infra.settings import Settings

PREFIX = "/codec"
MAX_PAYLOADS = 1000
CORS_HEADERS = ["content-type", "x-namespace", "authorization", "x-admin-token"]

router = APIRouter(
    prefix=PREFIX,
    tags=["codec"],
    responses=problems(
        {
            401: "No credentials (authentication on)",
            403: "Not an operator",
            422: "Not payloads, or encrypted with an unknown key",
        }
    ),
)


_BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
Base64 = Annotated[str, StringConstraints(pattern=_BASE64)]


class CodecPayload(BaseModel):
    """A ``temporal.api.common.v1.Payload`` in protobuf's JSON form (what the UI sends)."""

    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, Base64] = Field(
        default_factory=dict, description="metadata values, base64 (protobuf JSON form)"
    )
    data: Base64 = Field(default="", description="the payload's bytes, base64")


class CodecPayloads(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payloads: list[CodecPayload] = Field(default_factory=list, max_length=MAX_PAYLOADS)


def _codec(request: Request) -> EncryptionCodec:
    settings: Settings = request.app.state.codec_settings
    return codec_for(settings.resolved_codec_key_file)


def _apply(body: CodecPayloads, fn: Callable[[Payload], Payload]) -> CodecPayloads:
    try:
        parsed = json_format.ParseDict(body.model_dump(), Payloads())
    except json_format.ParseError as exc:
        raise ApiProblem(422, VALIDATION_ERROR, f"not Temporal payloads: {exc}") from exc
    try:
        out = Payloads(payloads=[fn(p) for p in parsed.payloads])
    except CodecKeyError as exc:
        raise ApiProblem(422, VALIDATION_ERROR, str(exc)) from exc
    return CodecPayloads.model_validate(json_format.MessageToDict(out))


@router.post(
    "/decode",
    summary="Decrypt payloads (Temporal remote codec; payloads not encrypted pass through)",
)
async def decode(body: CodecPayloads, request: Request, _: OperatorDep) -> CodecPayloads:
    return _apply(body, _codec(request).decrypt)


@router.post(
    "/encode",
    summary="Encrypt payloads with the current key (Temporal remote codec)",
)
async def encode(body: CodecPayloads, request: Request, _: OperatorDep) -> CodecPayloads:
    return _apply(body, _codec(request).encrypt)


class CodecCors:
    """Starlette's CORS middleware for ``/codec/*`` only (preflights included)."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["POST", "OPTIONS"],
            allow_headers=CORS_HEADERS,
            allow_credentials=True,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(PREFIX + "/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the codec routes and their CORS (one call in ``api.app.create_app``)."""
    app.state.codec_settings = settings
    app.include_router(router)
    app.add_middleware(CodecCors, origins=settings.codec_cors_origin_list)

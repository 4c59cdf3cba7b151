"""``/codec/encode`` and ``/codec/decode`` (api/routes/codec.py): the Temporal UI's remote codec.

Temporal's JSON form of payloads in and out, operators only when authentication is on, CORS
for the configured UI origins on ``/codec/*`` and nowhere else.
"""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter

from api.auth import mint_token
from domain.roles import Role
from infra.codec import ENCODING, KEY_ID_KEY, EncryptionCodec, KeyRing
from tests.api.conftest import ApiFactory

SECRET = "codec-endpoint-test-secret-0123456789abcdef"
ON = {"TRADEFLOW_AUTH": "on", "TRADEFLOW_JWT_SECRET": SECRET, "TRADEFLOW_AUTH_FAILURE_BURST": 100}
UI = "http://127.0.0.1:8233"


def plain_payloads(*values: Any) -> dict[str, Any]:
    payloads = DataConverter.default.payload_converter.to_payloads(list(values))
    return {"payloads": [json_format.MessageToDict(p) for p in payloads]}


def values_of(body: dict[str, Any]) -> list[Any]:
    payloads = [json_format.ParseDict(p, Payload()) for p in body["payloads"]]
    return DataConverter.default.payload_converter.from_payloads(payloads)


async def test_encode_then_decode_gives_the_values_back_and_encode_hides_them(
    api_factory: ApiFactory,
) -> None:
    async with api_factory() as api:
        sent = plain_payloads({"address": "742 Evergreen Terrace"}, 31.2345678)
        r = await api.http.post("/codec/encode", json=sent, headers={"X-Namespace": "default"})
        assert r.status_code == 200, r.text
        encoded = r.json()
        for p in encoded["payloads"]:
            assert base64.b64decode(p["metadata"]["encoding"]) == ENCODING
            assert KEY_ID_KEY in p["metadata"]
            assert b"Evergreen" not in base64.b64decode(p["data"])
        r = await api.http.post("/codec/decode", json=encoded)
        assert r.status_code == 200, r.text
        assert values_of(r.json()) == [{"address": "742 Evergreen Terrace"}, 31.2345678]
        # Unencoded payloads (histories from before the codec) come back as they were.
        r = await api.http.post("/codec/decode", json=sent)
        assert r.status_code == 200 and r.json() == sent


async def test_a_payload_under_an_unknown_key_or_not_a_payload_is_a_422_problem(
    api_factory: ApiFactory,
) -> None:
    async with api_factory() as api:
        [plain] = DataConverter.default.payload_converter.to_payloads(["x"])
        [foreign] = await EncryptionCodec(KeyRing.generate()).encode([plain])
        r = await api.http.post(
            "/codec/decode", json={"payloads": [json_format.MessageToDict(foreign)]}
        )
        assert r.status_code == 422
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "validation_error"
        assert foreign.metadata[KEY_ID_KEY].decode() in r.json()["detail"]
        r = await api.http.post("/codec/decode", json={"payloads": [{"data": "%%% not base64"}]})
        assert r.status_code == 422 and r.json()["code"] == "validation_error"
        r = await api.http.post("/codec/decode", json={"payloads": "nope"})
        assert r.status_code == 422


async def test_with_authentication_on_only_operators_may_decode(api_factory: ApiFactory) -> None:
    async with api_factory(**ON) as api:
        body = plain_payloads("secret address")
        assert (await api.http.post("/codec/decode", json=body)).status_code == 401
        customer = mint_token(api.settings, Role.CUSTOMER, "c-1")
        r = await api.http.post(
            "/codec/decode", json=body, headers={"Authorization": f"Bearer {customer}"}
        )
        assert r.status_code == 403
        r = await api.http.post("/codec/decode", json=body, headers={"X-Admin-Token": "wrong"})
        assert r.status_code == 401
        operator = mint_token(api.settings, Role.OPERATOR, "ops-1")
        for headers in ({"Authorization": f"Bearer {operator}"}, api.admin):
            r = await api.http.post("/codec/decode", json=body, headers=headers)
            assert r.status_code == 200, r.text


async def test_cors_answers_the_ui_origin_on_codec_routes_only(api_factory: ApiFactory) -> None:
    async with api_factory(**ON) as api:
        preflight = {
            "Origin": UI,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
        }
        r = await api.http.options("/codec/decode", headers=preflight)
        assert r.status_code == 200, r.text  # no credentials needed for a preflight
        assert r.headers["access-control-allow-origin"] == UI
        assert r.headers["access-control-allow-credentials"] == "true"
        allowed = r.headers["access-control-allow-headers"].lower()
        assert {"x-namespace", "authorization", "content-type"} <= set(allowed.split(", "))

        r = await api.http.options(
            "/codec/decode", headers={**preflight, "Origin": "http://evil.example"}
        )
        assert "access-control-allow-origin" not in r.headers

        # A real request from the UI gets the header too, also when it is refused (so the UI
        # can show why).
        r = await api.http.post("/codec/decode", json=plain_payloads(1), headers={"Origin": UI})
        assert r.status_code == 401
        assert r.headers["access-control-allow-origin"] == UI
        r = await api.http.post(
            "/codec/decode", json=plain_payloads(1), headers={"Origin": UI, **api.admin}
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == UI

        # The rest of the API is not opened to the UI's origin.
        r = await api.http.get("/healthz", headers={"Origin": UI})
        assert "access-control-allow-origin" not in r.headers
        r = await api.http.options("/v1/orders", headers=preflight)
        assert "access-control-allow-origin" not in r.headers

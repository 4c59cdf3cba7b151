"""Authentication against the real app: which tokens are taken, which refused, and why.

HS256 with the shared secret, RS256 with a public key, ES256 from a JWKS served over real
HTTP; tampered, expired, wrong-audience, wrong-issuer, ``alg: none``, wrong-key and
algorithm-confusion tokens refused with 401 and ``WWW-Authenticate: Bearer``; courier tokens
issued, used and revoked; failed authentications rate limited per client address and logged
without the credential; the modes and the startup line that names them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.server
import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from api.auth import auth_mode, mint_token
from domain.roles import Role
from infra.settings import Settings
from tests.api.conftest import ApiFactory
from tests.api.helpers import ADMIN_TOKEN, Api, assert_problem, make_settings, unique

SECRET = "unit-test-secret-" + "s" * 32
ON = {"TRADEFLOW_AUTH": "on", "TRADEFLOW_JWT_SECRET": SECRET}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": "tradeflow",
        "aud": "tradeflow",
        "sub": "c-1",
        "role": "customer",
        "iat": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def orders_as(api: Api, token: str) -> httpx.Response:
    return await api.http.get("/v1/orders", headers=bearer(token))


def refused(r: httpx.Response) -> None:
    assert_problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ------------------------------------------------------------------------------ HS256


async def test_a_customer_token_signed_with_the_secret_lists_orders(
    api_factory: ApiFactory,
) -> None:
    async with api_factory(**ON) as api:
        r = await orders_as(api, jwt.encode(claims(), SECRET, algorithm="HS256"))
        assert r.status_code == 200, r.text
        # Clock skew within the leeway is forgiven.
        r = await orders_as(
            api, jwt.encode(claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256")
        )
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(
            lambda: jwt.encode(claims(exp=int(time.time()) - 120), SECRET, algorithm="HS256"),
            id="expired beyond the leeway",
        ),
        pytest.param(
            lambda: jwt.encode(claims(aud="someone-else"), SECRET, algorithm="HS256"),
            id="wrong audience",
        ),
        pytest.param(
            lambda: jwt.encode(claims(iss="https://evil.example"), SECRET, algorithm="HS256"),
            id="wrong issuer",
        ),
        pytest.param(lambda: jwt.encode(claims(exp=None), SECRET, algorithm="HS256"), id="no exp"),
        pytest.param(
            lambda: jwt.encode(claims(), "another-secret-" + "x" * 32, algorithm="HS256"),
            id="wrong key",
        ),
        pytest.param(
            lambda: (
                _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
                + "."
                + _b64(json.dumps(claims()).encode())
                + "."
            ),
            id="alg none",
        ),
        pytest.param(lambda: _tampered(), id="tampered payload"),
        pytest.param(
            lambda: jwt.encode(claims(role="superuser"), SECRET, algorithm="HS256"),
            id="unknown role",
        ),
        pytest.param(lambda: "not-a-jwt-at-all", id="garbage"),
        pytest.param(lambda: "tfc_never-issued", id="unknown courier token"),
    ],
)
async def test_a_bad_token_is_refused_with_401_and_a_bearer_challenge(
    api_factory: ApiFactory, make_token: Any
) -> None:
    async with api_factory(**ON, TRADEFLOW_AUTH_FAILURE_BURST=1000) as api:
        refused(await orders_as(api, make_token()))


def _tampered() -> str:
    """A valid customer token whose payload was edited to claim the operator role."""
    header, _payload, signature = jwt.encode(claims(), SECRET, algorithm="HS256").split(".")
    forged = _b64(json.dumps(claims(role="operator")).encode())
    return f"{header}.{forged}.{signature}"


async def test_missing_and_malformed_authorization_answer_401(api_factory: ApiFactory) -> None:
    async with api_factory(**ON) as api:
        r = await api.http.get("/v1/orders")
        refused(r)
        assert "error=" not in r.headers["www-authenticate"]  # nothing was presented
        r = await api.http.get("/v1/orders", headers={"Authorization": "Basic dXNlcjpwdw=="})
        refused(r)
        assert 'error="invalid_token"' in r.headers["www-authenticate"]


# ------------------------------------------------------------------- RS256, ES256, JWKS


def _rsa() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, pem.decode()


async def test_rs256_tokens_verify_against_the_public_key_and_nothing_else(
    api_factory: ApiFactory, tmp_path: Path
) -> None:
    key, public_pem = _rsa()
    other, _ = _rsa()
    pem_file = tmp_path / "issuer.pem"
    pem_file.write_text(public_pem)
    async with api_factory(
        TRADEFLOW_AUTH="on",
        TRADEFLOW_JWT_PUBLIC_KEY=str(pem_file),
        TRADEFLOW_AUTH_FAILURE_BURST=100,
    ) as api:
        good = jwt.encode(claims(), key, algorithm="RS256")
        assert (await orders_as(api, good)).status_code == 200
        refused(await orders_as(api, jwt.encode(claims(), other, algorithm="RS256")))
        # Algorithm confusion: HS256 "signed" with the public key as the secret.
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps(claims(role="operator")).encode())
        mac = hmac.new(public_pem.encode(), f"{header}.{body}".encode(), hashlib.sha256)
        refused(await orders_as(api, f"{header}.{body}.{_b64(mac.digest())}"))
        # With a public key configured the data-dir HS256 secret is not accepted either.
        local = Settings.from_variables(
            {"TRADEFLOW_DATA_DIR": str(tmp_path / "other")}
        ).with_secrets()
        refused(await orders_as(api, mint_token(local, Role.OPERATOR, "op")))


@contextlib.contextmanager
def jwks_server(document: dict[str, Any]) -> Iterator[tuple[str, list[int]]]:
    """A real HTTP server on 127.0.0.1 serving a JWKS; yields (url, hit counter)."""
    hits = [0]
    payload = json.dumps(document).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits[0] += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", hits
    finally:
        server.shutdown()
        server.server_close()


async def test_es256_tokens_verify_with_keys_from_the_jwks_url(api_factory: ApiFactory) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "alg": "ES256", "use": "sig"})
    stranger = ec.generate_private_key(ec.SECP256R1())
    with jwks_server({"keys": [jwk]}) as (url, hits):
        async with api_factory(
            TRADEFLOW_AUTH="on", TRADEFLOW_JWKS_URL=url, TRADEFLOW_AUTH_FAILURE_BURST=100
        ) as api:
            good = jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "k1"})
            assert (await orders_as(api, good)).status_code == 200
            assert (await orders_as(api, good)).status_code == 200
            assert hits[0] == 1  # cached
            wrong = jwt.encode(claims(), stranger, algorithm="ES256", headers={"kid": "k1"})
            refused(await orders_as(api, wrong))
            unknown = jwt.encode(claims(), stranger, algorithm="ES256", headers={"kid": "k9"})
            refused(await orders_as(api, unknown))
            refused(await orders_as(api, unknown))
            assert hits[0] == 1  # an unknown kid refetches at most every 30 s


# -------------------------------------------------------------------------- couriers


async def test_a_courier_token_works_once_issued_and_stops_when_revoked(
    api_factory: ApiFactory, db_url: str
) -> None:
    courier = unique("k")
    async with api_factory(db_url=db_url, **ON, TRADEFLOW_AUTH_FAILURE_BURST=100) as api:
        assert_problem(
            await api.http.post(f"/v1/admin/couriers/{courier}/tokens", headers=api.admin),
            404,
            "not_found",
        )
        r = await api.http.put(
            f"/v1/admin/couriers/{courier}",
            json={"lat": 1.0, "lng": 2.0, "available": True},
            headers=api.admin,
        )
        assert r.status_code == 200
        issued = await api.http.post(f"/v1/admin/couriers/{courier}/tokens", headers=api.admin)
        assert issued.status_code == 201, issued.text
        token = issued.json()["token"]
        assert issued.json()["courier_id"] == courier
        stored = await api.sql(
            "SELECT token_hash, courier_id FROM courier_tokens WHERE courier_id = :c", c=courier
        )
        assert len(stored) == 1 and token not in stored[0][0]  # only a hash is kept
        r = await api.http.get(f"/v1/couriers/{courier}", headers=bearer(token))
        assert r.status_code == 200, r.text
        assert_problem(
            await api.http.get("/v1/couriers/someone-else", headers=bearer(token)),
            403,
            "forbidden",
        )
        revoked = await api.http.delete(f"/v1/admin/couriers/{courier}/tokens", headers=api.admin)
        assert revoked.json() == {"courier_id": courier, "revoked": 1}
        refused(await api.http.get(f"/v1/couriers/{courier}", headers=bearer(token)))


# ---------------------------------------------------------------- limits and logging


async def test_failed_authentications_are_rate_limited_per_address_and_never_logged(
    api_factory: ApiFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with api_factory(
        **ON, TRADEFLOW_AUTH_FAILURE_RATE="1/m", TRADEFLOW_AUTH_FAILURE_BURST=3
    ) as api:
        address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"

        def client(host: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=api.app, client=(host, 40000))
            return httpx.AsyncClient(transport=transport, base_url="http://api")

        bad = jwt.encode(claims(), "wrong-secret-" + "w" * 32, algorithm="HS256")
        good = jwt.encode(claims(), SECRET, algorithm="HS256")
        caplog.set_level(logging.WARNING, logger="api.auth")
        async with client(address) as attacker, client(address) as same:
            for _ in range(3):
                refused(await attacker.get("/v1/orders", headers=bearer(bad)))
            limited = await attacker.get("/v1/orders", headers=bearer(bad))
            assert_problem(limited, 429, "rate_limited")
            assert int(limited.headers["retry-after"]) >= 1
            # While the address is refused, even a good token from it waits (checked first).
            assert_problem(await same.get("/v1/orders", headers=bearer(good)), 429, "rate_limited")
            # Wrong admin tokens count too.
            assert (
                await attacker.get("/v1/couriers", headers={"X-Admin-Token": "guess"})
            ).status_code == 429
        async with client(f"{address}-elsewhere") as bystander:
            assert (await bystander.get("/v1/orders", headers=bearer(good))).status_code == 200
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert f"authentication failed from {address}" in logged
        assert bad not in logged and bad.split(".")[2] not in logged


# ------------------------------------------------------------------------------ modes


@pytest.mark.parametrize(
    ("auth", "bind_host", "enabled"),
    [
        ("auto", "127.0.0.1", False),
        ("auto", "::1", False),
        ("auto", "localhost", False),
        ("auto", "0.0.0.0", True),
        ("auto", "10.1.2.3", True),
        ("on", "127.0.0.1", True),
        ("off", "0.0.0.0", False),
    ],
)
def test_auto_asks_for_credentials_only_beyond_loopback(
    tmp_path: Path, auth: str, bind_host: str, enabled: bool
) -> None:
    settings = make_settings(tmp_path, "sqlite://", TRADEFLOW_AUTH=auth, BIND_HOST=bind_host)
    mode = auth_mode(settings)
    assert mode.enabled is enabled
    assert bind_host in mode.reason or auth != "auto"


async def test_auto_beyond_loopback_refuses_the_anonymous_and_says_why_at_start(
    api_factory: ApiFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="api.auth")
    async with api_factory(BIND_HOST="0.0.0.0", TRADEFLOW_JWT_SECRET=SECRET) as api:
        refused(await api.http.get("/v1/orders"))
        assert (await api.http.get("/v1/products")).status_code == 200
    assert "authentication on (TRADEFLOW_AUTH=auto and BIND_HOST 0.0.0.0 is beyond loopback)" in (
        caplog.text
    )
    caplog.clear()
    async with api_factory() as api:
        assert (await api.http.get("/v1/orders")).status_code == 200
    assert "authentication off (TRADEFLOW_AUTH=auto and BIND_HOST 127.0.0.1 is loopback)" in (
        caplog.text
    )


def test_a_short_jwt_secret_stops_the_process_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TRADEFLOW_JWT_SECRET"):
        make_settings(tmp_path, "sqlite://", TRADEFLOW_JWT_SECRET="short")


async def test_the_admin_token_still_works_as_the_operators_credential(
    api_factory: ApiFactory,
) -> None:
    async with api_factory(**ON) as api:
        r = await api.http.get("/v1/couriers", headers={"X-Admin-Token": ADMIN_TOKEN})
        assert r.status_code == 200
        assert_problem(
            await api.http.get("/v1/couriers", headers={"X-Admin-Token": "wrong"}),
            401,
            "unauthorized",
        )

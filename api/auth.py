"""Who is calling, and may they: authentication and the authorization rules of api.md.

``TRADEFLOW_AUTH`` decides whether credentials are asked for at all (``auto``: only when the
API listens beyond loopback, like Redis's protected mode). When they are, a caller is one of

- a **customer**, **courier**, **merchant** or **operator** by JWT (``Authorization: Bearer``;
  HS256 with ``TRADEFLOW_JWT_SECRET``, RS256/ES256 with ``TRADEFLOW_JWT_PUBLIC_KEY`` or a JWKS
  at ``TRADEFLOW_JWKS_URL``; ``iss``, ``aud``, ``exp`` and ``sub`` required; ``role`` claim,
  ``customer`` when absent);
- a **courier** by a courier token (``Bearer tfc_...``) that an operator issued; only its
  SHA-256 is stored, so looking it up compares no secret;
- an **operator** by ``X-Admin-Token`` (compared in constant time).

Routes state what they need with the dependencies at the end of this module (``CallerDep``,
``OrderReaderDep``, ``StaffDep``, ``OperatorDep``, ``CourierViewerDep``) and, where the rule
depends on the body, one call on the ``Caller`` (``caller.must_be_customer(body.customer_id)``).
Refused credentials answer 401 ``unauthorized`` with ``WWW-Authenticate: Bearer``, are logged
without the credential, and cost the client address a token of a GCRA bucket; an address that
has spent its bucket gets 429 ``rate_limited`` for every credential it presents until the
bucket refills, before anything is verified.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import jwt
from fastapi import Depends, Path, Request
from redis.exceptions import RedisError
from sqlalchemy import Table, select

from api.errors import FORBIDDEN, NOT_FOUND, UNAUTHORIZED, ApiProblem, unavailable
from domain.roles import STAFF_ROLES, Role
from infra.ratelimit import GcraLimiter
from infra.settings import Settings, parse_rate
from infra.sold_out_edge import order_copy
from store import courier_tokens
from store.models import Order

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlmodel.ext.asyncio.session import AsyncSession

log = logging.getLogger(__name__)

ADMIN_HEADER = "X-Admin-Token"
COURIER_TOKEN_PREFIX = "tfc_"
AUTH_UNAVAILABLE = "auth_unavailable"
RATE_LIMITED = "rate_limited"
FAILURE_RATE_PREFIX = "ratelimit:authfail"
HS_ALGORITHMS = ("HS256",)
ASYMMETRIC_ALGORITHMS = ("RS256", "ES256")
LOOPBACK_NAMES = frozenset({"localhost"})
MAX_CREDENTIAL_CHARS = 8192
"""Longer Authorization / X-Admin-Token values are refused unparsed."""
JWKS_TTL_S = 300.0
JWKS_MIN_REFRESH_S = 30.0
"""An unknown ``kid`` refetches the JWKS at most this often (a flood of made-up kids cannot
turn into a flood of fetches)."""
JWKS_TIMEOUT_S = 5.0

_ORDERS: Table = Order.__table__  # type: ignore[attr-defined]
_ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
_OrderId = Annotated[str, Path(min_length=1, max_length=64, pattern=_ID_PATTERN)]
_CourierId = Annotated[str, Path(min_length=1, max_length=64, pattern=_ID_PATTERN)]


# ------------------------------------------------------------------------------------ mode


@dataclass(frozen=True)
class AuthMode:
    enabled: bool
    reason: str
    """Why, for the startup log line."""


def is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def auth_mode(settings: Settings) -> AuthMode:
    if settings.auth == "on":
        return AuthMode(True, "TRADEFLOW_AUTH=on")
    if settings.auth == "off":
        return AuthMode(False, "TRADEFLOW_AUTH=off")
    if is_loopback(settings.bind_host):
        return AuthMode(
            False, f"TRADEFLOW_AUTH=auto and BIND_HOST {settings.bind_host} is loopback"
        )
    return AuthMode(
        True, f"TRADEFLOW_AUTH=auto and BIND_HOST {settings.bind_host} is beyond loopback"
    )


# ---------------------------------------------------------------------------------- caller


@dataclass(frozen=True)
class Caller:
    """An authenticated caller; ``role`` None means authentication is off (the open demo)."""

    role: Role | None
    subject: str
    via: str
    """``jwt``, ``courier_token``, ``admin_token`` or ``open``."""

    @property
    def is_open(self) -> bool:
        return self.role is None

    @property
    def sees_every_order(self) -> bool:
        return self.role is None or self.role in STAFF_ROLES

    def may_read_order_of(self, customer_id: str) -> bool:
        return self.sees_every_order or (self.role == Role.CUSTOMER and self.subject == customer_id)

    def must_be_customer(self, customer_id: str) -> None:
        """Only the customer places their own orders."""
        if self.is_open or (self.role == Role.CUSTOMER and self.subject == customer_id):
            return
        raise _forbidden(
            "only the customer named in customer_id may place this order"
            if self.role == Role.CUSTOMER
            else "orders are placed by customers"
        )

    def must_be_courier(self, courier_id: str) -> None:
        """Only the courier named in the event sends it."""
        if self.is_open or (self.role == Role.COURIER and self.subject == courier_id):
            return
        raise _forbidden("only the courier named in courier_id may send its delivery events")

    def orders_scope(self, customer_id: str | None) -> str | None:
        """The ``customer_id`` filter a listing of orders runs with."""
        if self.sees_every_order:
            return customer_id
        if self.role == Role.CUSTOMER and customer_id in (None, self.subject):
            return self.subject
        raise _forbidden("customers list only their own orders")


OPEN = Caller(role=None, subject="", via="open")


def _forbidden(detail: str) -> ApiProblem:
    return ApiProblem(403, FORBIDDEN, detail)


# ------------------------------------------------------------------------------------ JWTs


class InvalidCredential(Exception):
    """The credential was presented and is not good; the message says why (never the value)."""


def _load_public_key(text: str) -> str:
    if text.lstrip().startswith("-----BEGIN"):
        return text
    return FilePath(text).read_text()


class JwksKeys:
    """Verification keys from a JWKS URL, cached, refetched on an unknown ``kid``."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -float("inf")
        self._lock = asyncio.Lock()
        self._http: httpx.AsyncClient | None = None

    async def key(self, kid: str | None) -> jwt.PyJWK:
        name = kid or ""
        since = time.monotonic() - self._fetched_at
        if since > JWKS_TTL_S or (name not in self._keys and since > JWKS_MIN_REFRESH_S):
            await self._refresh()
        if name in self._keys:
            return self._keys[name]
        if not kid and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise InvalidCredential("the token's kid is not in the JWKS")

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at < 1.0:
                return  # another request refreshed meanwhile
            if self._http is None:
                self._http = httpx.AsyncClient(timeout=JWKS_TIMEOUT_S)
            try:
                r = await self._http.get(self._url)
                r.raise_for_status()
                keyset = jwt.PyJWKSet.from_dict(r.json())
            except (httpx.HTTPError, ValueError, jwt.PyJWKError) as exc:
                log.error("JWKS at %s not usable: %r", self._url, exc)
                if not self._keys:
                    raise unavailable(
                        AUTH_UNAVAILABLE, "the JWT key set cannot be fetched"
                    ) from exc
                return  # keep verifying with the keys we had
            self._keys = {
                str(k.key_id or ""): k
                for k in keyset.keys
                if k.algorithm_name in ASYMMETRIC_ALGORITHMS
            }
            self._fetched_at = time.monotonic()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


class JwtVerifier:
    """Verifies a JWT with the key its algorithm family is configured with, and only that.

    The algorithm is taken from an allowlist per key: the HS256 secret never verifies an RS or
    ES token and a public key never an HS one, so neither ``alg: none`` nor the old trick of
    signing HS256 with the public key as the secret gets through.
    """

    def __init__(self, settings: Settings) -> None:
        self._secret = settings.resolved_jwt_secret
        self._public_key = (
            _load_public_key(settings.jwt_public_key) if settings.jwt_public_key else None
        )
        self._jwks = JwksKeys(settings.jwks_url) if settings.jwks_url else None
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._leeway = settings.jwt_leeway_s

    @property
    def algorithms(self) -> list[str]:
        out: list[str] = []
        if self._secret:
            out += HS_ALGORITHMS
        if self._public_key or self._jwks:
            out += ASYMMETRIC_ALGORITHMS
        return out

    async def claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidCredential("not a JWT") from exc
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise InvalidCredential(f"algorithm {str(alg)[:16]!r} is not accepted")
        key: Any
        if alg in HS_ALGORITHMS:
            key = self._secret
        elif self._jwks is not None:
            jwk = await self._jwks.key(header.get("kid"))
            if jwk.algorithm_name != alg:
                raise InvalidCredential("the token's alg does not match its key")
            key = jwk.key
        else:
            key = self._public_key
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidCredential("the token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidCredential("the token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidCredential("the token is from another issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidCredential("the token's signature does not verify") from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidCredential(f"the token is not valid ({type(exc).__name__})") from exc

    async def aclose(self) -> None:
        if self._jwks is not None:
            await self._jwks.aclose()


def mint_token(
    settings: Settings,
    role: Role,
    subject: str,
    *,
    ttl_s: float = 3600.0,
    extra: dict[str, Any] | None = None,
) -> str:
    """A development JWT signed with the HS256 secret (``tradeflow token``)."""
    secret = settings.resolved_jwt_secret
    if secret is None:
        raise ValueError(
            "JWTs are verified with a public key or JWKS here; mint tokens with the issuer's"
            " private key (or set TRADEFLOW_JWT_SECRET)"
        )
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": subject,
        "role": role.value,
        "iat": now,
        "exp": now + int(ttl_s),
    }
    claims.update(extra or {})
    return jwt.encode(claims, secret, algorithm="HS256")


def new_courier_token() -> str:
    return COURIER_TOKEN_PREFIX + secrets.token_urlsafe(32)


# ----------------------------------------------------------------------------- authenticator


class Authenticator:
    """One per API process: the mode, the JWT keys, the failure limiter."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: aioredis.Redis,
        sessionmaker: async_sessionmaker[AsyncSession],
        admin_token: Callable[[], str],
    ) -> None:
        self.mode = auth_mode(settings)
        self._settings = settings
        self._sessionmaker = sessionmaker
        self._redis = redis
        self._admin_token = admin_token
        self._verifier: JwtVerifier | None = None
        self._failures = GcraLimiter(
            redis,
            rate_per_s=parse_rate(settings.auth_failure_rate),
            burst=settings.auth_failure_burst,
            prefix=FAILURE_RATE_PREFIX,
        )
        self._blocked_until: dict[str, float] = {}
        """Client addresses whose failure bucket is empty, until when (monotonic): checked
        before any verification, without a Redis round trip."""
        log.info("authentication %s (%s)", "on" if self.mode.enabled else "off", self.mode.reason)
        if self.mode.enabled:
            self._verifier = JwtVerifier(settings)
            log.info(
                "JWTs accepted: %s, iss=%s aud=%s",
                ", ".join(self._verifier.algorithms) or "none",
                settings.jwt_issuer,
                settings.jwt_audience,
            )

    @property
    def enabled(self) -> bool:
        return self.mode.enabled

    def verifier(self) -> JwtVerifier:
        if self._verifier is None:
            self._verifier = JwtVerifier(self._settings)
        return self._verifier

    async def aclose(self) -> None:
        if self._verifier is not None:
            await self._verifier.aclose()

    # -- the checks ---------------------------------------------------------------------

    def admin_token_matches(self, presented: str) -> bool:
        return hmac.compare_digest(
            presented.encode("utf-8", "surrogateescape"), self._admin_token().encode("utf-8")
        )

    async def caller(self, request: Request) -> Caller:
        """The caller a request's credentials prove (401 / 429 when they prove nothing)."""
        admin = request.headers.get(ADMIN_HEADER)
        authorization = request.headers.get("authorization")
        if not admin and not authorization:
            raise _unauthorized("credentials are required: Authorization: Bearer <token>")
        address = client_address(request)
        self._refuse_if_blocked(address)
        try:
            return await self._identify(admin, authorization)
        except InvalidCredential as exc:
            await self._failed(address, request, str(exc))
            raise _unauthorized(str(exc), invalid_token=True) from exc

    async def operator(self, request: Request) -> Caller:
        """An operator: ``X-Admin-Token`` (401 without, 403 when wrong, as api.md's admin
        section says) or a JWT with ``role=operator``."""
        admin = request.headers.get(ADMIN_HEADER)
        if admin is None and self.enabled and request.headers.get("authorization"):
            caller = await self.caller(request)
            if caller.role != Role.OPERATOR:
                raise _forbidden("this route is for operators")
            return caller
        if not admin:
            raise ApiProblem(
                401,
                UNAUTHORIZED,
                f"the {ADMIN_HEADER} header is required",
                headers={"WWW-Authenticate": 'Bearer realm="tradeflow"'},
            )
        address = client_address(request)
        self._refuse_if_blocked(address)
        if len(admin) > MAX_CREDENTIAL_CHARS or not self.admin_token_matches(admin):
            await self._failed(address, request, "wrong admin token")
            raise ApiProblem(403, FORBIDDEN, "the admin token is not valid")
        return Caller(role=Role.OPERATOR, subject="admin-token", via="admin_token")

    async def _identify(self, admin: str | None, authorization: str | None) -> Caller:
        # Authorization names who acts; X-Admin-Token speaks only when it is alone (an
        # operator's tool that sends it on every request still acts as the customer it names).
        if not authorization:
            assert admin is not None
            if len(admin) > MAX_CREDENTIAL_CHARS or not self.admin_token_matches(admin):
                raise InvalidCredential("wrong admin token")
            return Caller(role=Role.OPERATOR, subject="admin-token", via="admin_token")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise InvalidCredential("the Authorization header must be 'Bearer <token>'")
        if len(token) > MAX_CREDENTIAL_CHARS:
            raise InvalidCredential("the token is too long")
        if token.startswith(COURIER_TOKEN_PREFIX):
            return await self._courier_by_token(token)
        claims = await self.verifier().claims(token)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 128:
            raise InvalidCredential("the token's sub is not an id")
        try:
            role = Role(claims.get("role", Role.CUSTOMER.value))
        except ValueError as exc:
            raise InvalidCredential("the token's role is not one tradeflow knows") from exc
        return Caller(role=role, subject=subject, via="jwt")

    async def _courier_by_token(self, token: str) -> Caller:
        async with self._sessionmaker() as session:
            courier_id = await courier_tokens.courier_of(session, token=token)
            await session.commit()
        if courier_id is None:
            raise InvalidCredential("unknown or revoked courier token")
        return Caller(role=Role.COURIER, subject=courier_id, via="courier_token")

    # -- failures -----------------------------------------------------------------------

    def _refuse_if_blocked(self, address: str) -> None:
        until = self._blocked_until.get(address)
        if until is None:
            return
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked_until[address]
            return
        raise _rate_limited(left)

    async def _failed(self, address: str, request: Request, why: str) -> None:
        log.warning(
            "authentication failed from %s on %s %s: %s",
            address,
            request.method,
            request.url.path,
            why,
        )
        try:
            decision = await self._failures.allow(address)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("auth failure limiter unavailable (letting %s retry): %s", address, exc)
            return
        if not decision.allowed:
            if len(self._blocked_until) > 100_000:  # bounded memory under an address flood
                self._blocked_until.clear()
            self._blocked_until[address] = time.monotonic() + decision.retry_after_s
            log.warning(
                "client %s refused for %.1f s: too many failed authentications",
                address,
                decision.retry_after_s,
            )
            raise _rate_limited(decision.retry_after_s)

    # -- ownership ----------------------------------------------------------------------

    async def customer_of_order(self, order_id: str) -> str | None:
        async with self._sessionmaker() as session:
            row = (
                await session.execute(
                    select(_ORDERS.c.customer_id).where(_ORDERS.c.order_id == order_id)
                )
            ).first()
            await session.commit()
        if row is not None:
            return str(row[0])
        # A loser answered at the edge and not written to SQL yet (api/write_behind.py).
        try:
            copy = await order_copy(self._redis, order_id)
        except (RedisError, OSError):
            return None
        return None if copy is None else str(copy["customer_id"])


def client_address(request: Request) -> str:
    """The peer address as uvicorn reports it (behind a proxy: X-Forwarded-For from the
    addresses in FORWARDED_ALLOW_IPS only)."""
    return request.client.host if request.client is not None else "unknown"


def _unauthorized(detail: str, *, invalid_token: bool = False) -> ApiProblem:
    challenge = 'Bearer realm="tradeflow"' + (', error="invalid_token"' if invalid_token else "")
    return ApiProblem(401, UNAUTHORIZED, detail, headers={"WWW-Authenticate": challenge})


def _rate_limited(retry_after_s: float) -> ApiProblem:
    retry = str(max(1, int(retry_after_s + 0.999)))
    return ApiProblem(
        429,
        RATE_LIMITED,
        f"too many failed authentications from this address; retry in {retry} s",
        headers={"Retry-After": retry},
    )


# ---------------------------------------------------------------------------- dependencies


def _authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.tradeflow.auth
    return auth


async def authenticated_caller(request: Request) -> Caller:
    auth = _authenticator(request)
    if not auth.enabled:
        return OPEN
    return await auth.caller(request)


CallerDep = Annotated[Caller, Depends(authenticated_caller)]
"""Whoever the credentials prove (anyone, when authentication is off)."""


async def order_reader(order_id: _OrderId, caller: CallerDep, request: Request) -> Caller:
    """The order's customer, a merchant or an operator; to anyone else the order does not
    exist (the same 404 as an unknown id, so ids leak nothing)."""
    if caller.sees_every_order:
        return caller
    customer_id = await _authenticator(request).customer_of_order(order_id)
    if customer_id is None or not caller.may_read_order_of(customer_id):
        raise ApiProblem(404, NOT_FOUND, f"order {order_id!r} does not exist")
    return caller


OrderReaderDep = Annotated[Caller, Depends(order_reader)]


async def staff(caller: CallerDep) -> Caller:
    if caller.is_open or caller.role in STAFF_ROLES:
        return caller
    raise _forbidden("this is for merchants and operators")


StaffDep = Annotated[Caller, Depends(staff)]
"""A merchant or an operator (JWT role, or X-Admin-Token)."""


async def operator(caller: CallerDep) -> Caller:
    if caller.is_open or caller.role == Role.OPERATOR:
        return caller
    raise _forbidden("this is for operators")


OperatorDep = Annotated[Caller, Depends(operator)]


async def courier_viewer(courier_id: _CourierId, caller: CallerDep) -> Caller:
    if caller.is_open or caller.role == Role.OPERATOR:
        return caller
    if caller.role == Role.COURIER and caller.subject == courier_id:
        return caller
    raise _forbidden("a courier's view is for operators and the courier itself")


CourierViewerDep = Annotated[Caller, Depends(courier_viewer)]


async def admin(request: Request) -> Caller:
    """The admin routes: X-Admin-Token in every mode (as api.md has always said), or an
    operator's JWT when authentication is on."""
    return await _authenticator(request).operator(request)

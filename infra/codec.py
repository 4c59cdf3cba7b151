"""Customer PII encrypted in Temporal: an AES-GCM payload codec with a key ring.

Every payload a tradeflow client or worker sends to Temporal (workflow and activity inputs and
results, signals, updates, queries, memos, failure messages) is replaced by

    metadata: {encoding: "binary/encrypted", encryption-key-id: "<key id>"}
    data:     12-byte nonce + AES-256-GCM(serialized original payload, aad=key id)

so the Temporal server and its database hold no delivery address, coordinates or card token in
plaintext. Search attributes are never passed through a codec (the server indexes them), so
PII stays out of them beyond the customer id.

Keys rotate: the ring has one *current* key (what is encoded with) and any number of older ones
(what is still decoded). A payload names its key, so histories written under an old key decode
after a new key becomes current, for as long as the old key stays in the ring. Payloads that are
not ``binary/encrypted`` (histories recorded before the codec, or by a client without it) pass
through untouched, which is also what lets the committed replay histories replay.

The ring is a JSON file (``TRADEFLOW_CODEC_KEY_FILE``, default ``<data dir>/codec_keys.json``):

    {"current": "k20261202-1a2b3c4d",
     "keys": {"k20261202-1a2b3c4d": "<base64 of 32 random bytes>", ...}}

``tradeflow codec rotate`` adds a key and makes it current; processes notice the file changed
(checked at most every ``RELOAD_EVERY_S``) and a payload under a key they do not know yet makes
them read the file again at once.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter, DefaultFailureConverter, PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID_KEY = "encryption-key-id"
NONCE_BYTES = 12
KEY_BYTES = 32
RELOAD_EVERY_S = 5.0
"""How often a process looks whether the key file changed (a ``stat``, nothing more)."""
DEFAULT_KEY_FILE = "codec_keys.json"


class CodecKeyError(ValueError):
    """A payload names a key the ring does not hold, or does not decrypt under it."""


def new_key_id(now: datetime | None = None) -> str:
    return f"k{(now or datetime.now(UTC)).strftime('%Y%m%d')}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class KeyRing:
    current: str
    keys: dict[str, bytes]

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise ValueError(f"the current key {self.current!r} is not in the ring")
        for kid, key in self.keys.items():
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {kid!r} has {len(key)} bytes, AES-256 needs {KEY_BYTES}")

    @classmethod
    def generate(cls) -> KeyRing:
        kid = new_key_id()
        return cls(current=kid, keys={kid: AESGCM.generate_key(bit_length=KEY_BYTES * 8)})

    def rotated(self) -> KeyRing:
        """A ring with a new current key; every older key stays, so old payloads decode."""
        kid = new_key_id()
        while kid in self.keys:
            kid = new_key_id()
        return KeyRing(
            current=kid, keys={**self.keys, kid: AESGCM.generate_key(bit_length=KEY_BYTES * 8)}
        )

    def to_json(self) -> str:
        keys = {k: base64.b64encode(v).decode() for k, v in self.keys.items()}
        return json.dumps({"current": self.current, "keys": keys}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> KeyRing:
        raw = json.loads(text)
        if not isinstance(raw, dict) or not isinstance(raw.get("keys"), dict):
            raise ValueError('a key ring is {"current": "<id>", "keys": {"<id>": "<base64>"}}')
        keys = {str(k): base64.b64decode(v, validate=True) for k, v in raw["keys"].items()}
        return cls(current=str(raw.get("current")), keys=keys)

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        try:
            return cls.from_json(path.read_text())
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a codec key ring: {exc}") from exc

    def save(self, path: Path) -> None:
        """Write atomically (readers see the old or the new ring, never half of one), 0600."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)


def ensure_key_file(path: Path) -> KeyRing:
    """The ring at ``path``, created with one fresh key when the file is missing. Processes
    racing here agree: the ring is written to a private temporary file and linked into place,
    which only the first one manages; the others read the winner's whole file."""
    if path.exists():
        return KeyRing.load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ring = KeyRing.generate()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(ring.to_json())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return KeyRing.load(path)
        return ring
    finally:
        tmp.unlink(missing_ok=True)


def rotate_key_file(path: Path) -> KeyRing:
    """Add a new current key to the ring at ``path`` (created when missing)."""
    ring = ensure_key_file(path).rotated()
    ring.save(path)
    return ring


@dataclass
class KeyFile:
    """A key ring kept in step with its file (re-read when the file changes)."""

    path: Path
    reload_every_s: float = RELOAD_EVERY_S
    _ring: KeyRing = field(init=False)
    _stamp: tuple[int, int] = field(init=False, default=(0, 0))
    _checked: float = field(init=False, default=0.0)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._ring = ensure_key_file(self.path)
        self._stamp = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def ring(self, *, force: bool = False) -> KeyRing:
        now = time.monotonic()
        if not force and now - self._checked < self.reload_every_s:
            return self._ring
        with self._lock:
            self._checked = now
            stamp = self._stat()
            if stamp != self._stamp and stamp != (0, 0):
                with contextlib.suppress(ValueError, OSError):  # keep the last good ring
                    self._ring = KeyRing.load(self.path)
                    self._stamp = stamp
            return self._ring


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over each whole payload; the key id goes in the metadata (and is bound to
    the ciphertext as associated data, so a payload cannot be relabelled to another key)."""

    def __init__(self, keys: KeyRing | KeyFile) -> None:
        super().__init__()
        self._keys = keys
        self._ciphers: dict[tuple[str, bytes], AESGCM] = {}

    def _ring(self, *, force: bool = False) -> KeyRing:
        return self._keys.ring(force=force) if isinstance(self._keys, KeyFile) else self._keys

    def _cipher(self, kid: str, key: bytes) -> AESGCM:
        cipher = self._ciphers.get((kid, key))
        if cipher is None:
            cipher = self._ciphers[(kid, key)] = AESGCM(key)
        return cipher

    @property
    def current_key_id(self) -> str:
        return self._ring().current

    def encrypt(self, payload: Payload) -> Payload:
        ring = self._ring()
        kid = ring.current
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._cipher(kid, ring.keys[kid]).encrypt(
            nonce, payload.SerializeToString(), kid.encode()
        )
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_KEY: kid.encode()}, data=nonce + sealed
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # written before the codec (or without it): passes through
        kid = payload.metadata.get(KEY_ID_KEY, b"").decode()
        ring = self._ring()
        if kid not in ring.keys:
            ring = self._ring(force=True)  # a key added since the last look
        key = ring.keys.get(kid)
        if key is None:
            raise CodecKeyError(
                f"payload encrypted with key {kid!r}, which is not in the key ring "
                f"(keys: {', '.join(sorted(ring.keys))}); add it back to decode this history"
            )
        data = payload.data
        try:
            plain = self._cipher(kid, key).decrypt(
                data[:NONCE_BYTES], data[NONCE_BYTES:], kid.encode()
            )
            return Payload.FromString(plain)
        except (InvalidTag, ValueError, DecodeError) as exc:  # tampered, truncated, not ours
            raise CodecKeyError(f"payload does not decrypt under key {kid!r}") from exc

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]


class EncryptedFailureConverter(DefaultFailureConverter):
    """Failure messages and stack traces go into an (encrypted) payload too: an error that
    quotes an address must not put it in the history in plaintext."""

    def __init__(self) -> None:
        super().__init__(encode_common_attributes=True)


def data_converter(codec: EncryptionCodec) -> DataConverter:
    return DataConverter(payload_codec=codec, failure_converter_class=EncryptedFailureConverter)


_codecs: dict[Path, EncryptionCodec] = {}
_codecs_lock = threading.Lock()


def codec_for(path: Path) -> EncryptionCodec:
    """One codec per key file and process (the API's endpoint and its client share it)."""
    path = path.resolve()
    with _codecs_lock:
        codec = _codecs.get(path)
        if codec is None:
            codec = _codecs[path] = EncryptionCodec(KeyFile(path))
        return codec

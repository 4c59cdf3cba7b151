"""The payload codec (infra/codec.py): AES-GCM with the key id in the metadata, a key ring
that keeps old payloads decodable after rotation, passthrough for unencoded payloads."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter

from infra.codec import (
    ENCODING,
    KEY_ID_KEY,
    CodecKeyError,
    EncryptionCodec,
    KeyFile,
    KeyRing,
    data_converter,
    ensure_key_file,
    rotate_key_file,
)


@dataclass
class Delivery:
    address: str
    lat: float
    lng: float


ADDRESS = Delivery("742 Evergreen Terrace, Springfield", 31.2345678, 121.4567891)


async def test_a_value_leaves_encrypted_and_comes_back_equal() -> None:
    converter = data_converter(EncryptionCodec(KeyRing.generate()))
    [payload] = await converter.encode([ADDRESS])
    assert payload.metadata["encoding"] == ENCODING
    raw = payload.SerializeToString()
    for plain in (b"Evergreen", b"31.2345678", b"121.4567891", b"json/plain"):
        assert plain not in raw
    assert await converter.decode([payload], [Delivery]) == [ADDRESS]


async def test_the_same_value_encrypts_differently_each_time() -> None:
    codec = EncryptionCodec(KeyRing.generate())
    [plain] = DataConverter.default.payload_converter.to_payloads([ADDRESS])
    first, second = await codec.encode([plain, plain])
    assert first.data != second.data
    assert await codec.decode([first, second]) == [plain, plain]


async def test_unencoded_payloads_pass_through_as_they_are() -> None:
    """Histories recorded before the codec (tests/replay/histories) still decode."""
    codec = EncryptionCodec(KeyRing.generate())
    [plain] = DataConverter.default.payload_converter.to_payloads([ADDRESS])
    assert await codec.decode([plain]) == [plain]
    converter = data_converter(codec)
    assert await converter.decode([plain], [Delivery]) == [ADDRESS]


async def test_an_old_payload_decodes_after_a_new_key_became_current(tmp_path: Path) -> None:
    path = tmp_path / "codec_keys.json"
    writer = EncryptionCodec(KeyFile(path))
    reader = EncryptionCodec(KeyFile(path, reload_every_s=3600))  # another process, idle
    old_kid = writer.current_key_id
    [plain] = DataConverter.default.payload_converter.to_payloads([ADDRESS])
    [old] = await writer.encode([plain])
    assert old.metadata[KEY_ID_KEY] == old_kid.encode()

    ring = rotate_key_file(path)
    assert ring.current != old_kid and old_kid in ring.keys
    rotated = EncryptionCodec(KeyFile(path))
    [new] = await rotated.encode([plain])
    assert new.metadata[KEY_ID_KEY] == ring.current.encode()
    # The new key encodes; the old payload still decodes, in the rotated process and in the
    # one that has not looked at the file since (an unknown key id makes it read it at once).
    assert await rotated.decode([old, new]) == [plain, plain]
    assert await reader.decode([new, old]) == [plain, plain]


async def test_a_payload_under_a_key_not_in_the_ring_is_refused_with_its_key_id() -> None:
    [plain] = DataConverter.default.payload_converter.to_payloads([ADDRESS])
    [payload] = await EncryptionCodec(KeyRing.generate()).encode([plain])
    other = EncryptionCodec(KeyRing.generate())
    with pytest.raises(CodecKeyError, match=payload.metadata[KEY_ID_KEY].decode()):
        await other.decode([payload])


async def test_relabelling_a_payload_to_another_key_does_not_decrypt() -> None:
    ring = KeyRing.generate().rotated()
    codec = EncryptionCodec(ring)
    [plain] = DataConverter.default.payload_converter.to_payloads([ADDRESS])
    [payload] = await codec.encode([plain])
    other = next(k for k in ring.keys if k != ring.current)
    payload.metadata[KEY_ID_KEY] = other.encode()
    with pytest.raises(CodecKeyError, match="does not decrypt"):
        await codec.decode([payload])
    tampered = Payload(metadata=dict(payload.metadata), data=payload.data[:-1] + b"\x00")
    tampered.metadata[KEY_ID_KEY] = ring.current.encode()
    with pytest.raises(CodecKeyError):
        await codec.decode([tampered])
    truncated = Payload(metadata=dict(tampered.metadata), data=b"short")
    with pytest.raises(CodecKeyError):
        await codec.decode([truncated])


def test_the_key_file_is_created_once_private_and_shared_by_racing_processes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data" / "codec_keys.json"
    with ThreadPoolExecutor(8) as pool:
        rings = list(pool.map(lambda _: ensure_key_file(path), range(16)))
    assert len({r.current for r in rings}) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KeyRing.load(path) == rings[0]


async def test_failure_messages_are_encrypted_too() -> None:
    from temporalio.api.failure.v1 import Failure
    from temporalio.exceptions import ApplicationError

    converter = data_converter(EncryptionCodec(KeyRing.generate()))
    failure = Failure()
    await converter.encode_failure(ApplicationError("no courier near 742 Evergreen"), failure)
    assert b"Evergreen" not in failure.SerializeToString()
    error = await converter.decode_failure(failure)
    assert "742 Evergreen" in str(error)


def test_a_broken_key_file_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "codec_keys.json"
    path.write_text('{"current": "a", "keys": {"a": "c2hvcnQ="}}')
    with pytest.raises(ValueError, match=r"codec_keys\.json"):
        ensure_key_file(path)

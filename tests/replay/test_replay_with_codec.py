"""The committed histories were recorded without the payload codec: workers that run with it
(every worker does, ``infra.temporal.connect``) still replay them, because the codec passes
unencoded payloads through (infra/codec.py)."""

from __future__ import annotations

from pathlib import Path

from temporalio.worker import Replayer

from cli.history import REPLAY_WORKFLOWS, load_history
from infra.codec import EncryptionCodec, KeyRing, data_converter

HISTORIES = Path(__file__).parent / "histories"


async def test_every_committed_history_replays_through_the_codec() -> None:
    paths = sorted(HISTORIES.rglob("*.json"))
    assert paths
    replayer = Replayer(
        workflows=REPLAY_WORKFLOWS,
        data_converter=data_converter(EncryptionCodec(KeyRing.generate())),
    )

    async def histories():  # type: ignore[no-untyped-def]
        for path in paths:
            yield load_history(path)

    failures: list[str] = []
    async with replayer.workflow_replay_iterator(histories()) as results:
        i = 0
        async for result in results:
            if result.replay_failure is not None:
                failures.append(f"{paths[i].name}: {result.replay_failure}")
            i += 1
    assert i == len(paths)
    assert failures == []

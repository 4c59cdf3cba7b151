"""``tradeflow codec``: the payload codec's key ring (infra/codec.py).

    tradeflow codec keys      # key ids in the ring, the current one marked
    tradeflow codec rotate    # add a key and make it current; older keys stay for decoding

The ring is ``TRADEFLOW_CODEC_KEY_FILE`` (default ``<data dir>/codec_keys.json``). Running
processes pick a rotation up within seconds (they watch the file); payloads written under an
older key keep decoding as long as that key stays in the ring.
"""

from __future__ import annotations

import argparse

from cli.main import action_parsers, command_parser
from cli.procs import say
from infra.codec import ensure_key_file, rotate_key_file
from infra.settings import Settings


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = command_parser(
        subparsers, "codec", help="list or rotate the payload encryption keys", doc=__doc__
    )
    actions = action_parsers(parser, "codec")
    actions.add_parser("keys", help="list the key ids (current one marked)")
    actions.add_parser("rotate", help="add a new current key (old ones still decode)")


def run(args: argparse.Namespace) -> int:
    path = Settings().resolved_codec_key_file
    if args.codec_command == "rotate":
        ring = rotate_key_file(path)
        say(f"new current key {ring.current} in {path} ({len(ring.keys)} keys)")
        return 0
    ring = ensure_key_file(path)
    for kid in sorted(ring.keys):
        say(f"{'*' if kid == ring.current else ' '} {kid}")
    return 0

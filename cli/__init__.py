"""The ``tradeflow`` command line: ``tradeflow up`` and the operator tools next to it."""

"""Reusable primitives with no business knowledge."""

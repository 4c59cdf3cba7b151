"""Deterministic orchestration only: imports the standard library, temporalio and domain/."""

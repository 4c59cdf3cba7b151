"""infra.bytecode: the worker writes the .pyc of the modules the workflow sandbox re-imports,
even with PYTHONDONTWRITEBYTECODE, and says so when it cannot."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

import workflows.checkout
from infra.bytecode import ensure_bytecode, sandboxed_sources
from worker import WORKFLOWS_BY_QUEUE


def _package(tmp_path: Path, name: str) -> type:
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "flows.py").write_text("class Flow:\n    pass\n")
    (pkg / "helpers.py").write_text("X = 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(f"{name}.flows")
    finally:
        sys.path.remove(str(tmp_path))
    return module.Flow  # type: ignore[no-any-return]


def test_every_module_of_the_workflow_package_is_a_source() -> None:
    sources = sandboxed_sources(wf for flows in WORKFLOWS_BY_QUEUE.values() for wf in flows)
    names = {p.name for p in sources}
    assert Path(workflows.checkout.__file__).resolve() in sources
    assert {"__init__.py", "checkout.py", "payment.py", "delivery.py"} <= names


def test_pyc_written_despite_dont_write_bytecode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    flow = _package(tmp_path, "bytecode_pkg_a")
    pycs = [
        Path(importlib.util.cache_from_source(str(tmp_path / "bytecode_pkg_a" / f)))
        for f in ("__init__.py", "flows.py", "helpers.py")
    ]
    assert not any(p.exists() for p in pycs)  # the import itself wrote none

    compiled, failed = ensure_bytecode([flow])

    assert (compiled, failed) == (3, [])
    assert all(p.exists() for p in pycs)
    # Up to date: a second call leaves the files as they are.
    stamps = [p.stat().st_mtime_ns for p in pycs]
    assert ensure_bytecode([flow]) == (3, [])
    assert [p.stat().st_mtime_ns for p in pycs] == stamps


def test_unwritable_cache_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    flow = _package(tmp_path, "bytecode_pkg_b")
    # A file where the cache directory would go: no .pyc can be written, even by root.
    (tmp_path / "bytecode_pkg_b" / "__pycache__").write_text("")

    compiled, failed = ensure_bytecode([flow])

    assert compiled == 0
    assert {p.name for p in failed} == {"__init__.py", "flows.py", "helpers.py"}
    assert "compiles them from source" in caplog.text

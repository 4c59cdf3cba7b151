"""Bytecode for the modules that Temporal's workflow sandbox imports afresh for every run.

The sandbox (``temporalio.worker.workflow_sandbox``) executes a workflow's module again for
each workflow instance it creates: every new run, and every run that comes back after leaving
the sticky cache. Python takes that module's code from ``__pycache__`` when a ``.pyc`` is
there; with ``PYTHONDONTWRITEBYTECODE=1`` (set in many images, this repository's Dockerfile
and CI machine among them) nothing ever writes one, so every instance compiles the module from
source. Measured on ``bench/orders.py``'s load: 13% of the worker's CPU went to that compile
(``py-spy``: ``SourceLoader.source_to_code`` under ``SandboxedWorkflowRunner.create_instance``),
and the same for the null-shape baseline's worker.

:func:`ensure_bytecode` writes the ``.pyc`` of those modules once, at worker start, whatever
``PYTHONDONTWRITEBYTECODE`` says (it governs the import system's writes, not this explicit
compile). A read-only tree is logged and served as before (the Dockerfile compiles at build
time for that reason). Timestamp-checked ``.pyc`` as Python writes them: an edited source is
compiled again by the next import, as without this.
"""

from __future__ import annotations

import compileall
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


def sandboxed_sources(workflow_classes: Iterable[type]) -> list[Path]:
    """The source files the sandbox runs again per instance: each workflow class's module and
    the other modules of its package (``__init__`` included, the sandbox imports the package
    first), where they are plain ``.py`` files on disk."""
    found: set[Path] = set()
    for cls in workflow_classes:
        module = sys.modules.get(cls.__module__)
        path = getattr(module, "__file__", None)
        if not path or not path.endswith(".py"):
            continue
        found.update(Path(path).resolve().parent.glob("*.py"))
    return sorted(found)


def ensure_bytecode(workflow_classes: Iterable[type]) -> tuple[int, list[Path]]:
    """Write missing or stale ``.pyc`` files for :func:`sandboxed_sources`; returns how many
    files are now served from bytecode and those that could not be written."""
    sources = sandboxed_sources(workflow_classes)
    failed: list[Path] = []
    for source in sources:
        try:
            ok = compileall.compile_file(str(source), quiet=2)
        except OSError:
            ok = False
        if not ok:
            failed.append(source)
    if failed:
        log.warning(
            "no bytecode could be written for %s: the workflow sandbox compiles them from source "
            "for every workflow instance (compile at build time: python -m compileall)",
            ", ".join(str(p) for p in failed),
        )
    return len(sources) - len(failed), failed

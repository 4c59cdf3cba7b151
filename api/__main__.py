"""``python -m api``: serve the API with uvicorn on ``BIND_HOST``:``API_PORT``."""

from __future__ import annotations

import logging

import uvicorn

from api.app import create_app
from infra.settings import get_settings
from infra.telemetry import setup_tracing, shutdown_tracing


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    setup_tracing("tradeflow-api", settings)
    try:
        uvicorn.run(
            create_app(settings),
            host=settings.bind_host,
            port=settings.api_port,
            log_level="info",
            loop=settings.event_loop,  # infra/eventloop.py: uvloop where installed
            # Shutdown: uvicorn stops accepting, drains in-flight requests, runs the lifespan exit.
            timeout_graceful_shutdown=10,
        )
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    main()

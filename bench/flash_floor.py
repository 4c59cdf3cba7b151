"""The floor of bench/flash_sale.py: a FastAPI ``POST /v1/orders`` that parses the same body
with the API's own model, runs one Redis ``EVALSHA`` (take a unit if one is left) and answers
202. Nothing cheaper can answer a checkout over HTTP in Python on this machine, so the real
API's rate is measured against it.

    .venv/bin/python -m bench.flash_floor --port 8099 --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import uuid
from typing import Annotated

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse

from api.schemas import CheckoutBody

TAKE = """
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
if left >= tonumber(ARGV[1]) then return redis.call('DECRBY', KEYS[1], ARGV[1]) end
return -1
"""


def make_app(redis_url: str, key: str) -> FastAPI:
    app = FastAPI()
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    take = client.register_script(TAKE)

    @app.post("/v1/orders", status_code=202)
    async def checkout(
        body: CheckoutBody, idempotency_key: Annotated[str, Header(min_length=1)]
    ) -> JSONResponse:
        left = await take(keys=[key], args=[body.items[0].quantity])
        order_id = f"o_{uuid.uuid4().hex}"
        return JSONResponse(
            {"order_id": order_id, "status": "PENDING" if int(left) >= 0 else "FAILED"},
            status_code=202,
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--key", default="bench:flash-floor:left")
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.redis_url, args.key), host="127.0.0.1", port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()

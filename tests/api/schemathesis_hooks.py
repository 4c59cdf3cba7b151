"""schemathesis hooks for tests/api/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

Two rules of the API no schema can state, applied to schema-valid (positive) cases only, so that
those cases reach the business logic instead of being refused by design:

* an ``Idempotency-Key`` is bound to the first body sent with it (a second, different body is
  a 422 ``idempotency_key_reused``): every positive case gets a fresh key;
* orders buy products of the demo catalogue (an unknown SKU is a 422), and refunds do not
  restock (the lines must be items of that order);
* a page cursor is opaque: only one the API issued is valid (a made-up one is a 422), so
  valid cases ask for the first page;
* a PSP webhook must carry the HMAC of its exact bytes under the shared secret
  (``SCHEMATHESIS_WEBHOOK_SECRET``): the body is serialized here, once, and signed.

Negative cases are sent as generated: a missing or blank key, an unsigned or mis-signed webhook
must still be refused, and are.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import schemathesis

from cli.seed import DEMO_PRODUCTS
from psp.signing import SIGNATURE_HEADER, sign

WEBHOOK_PATH = "/v1/payments/webhook"
DEMO_SKUS = [p.sku for p in DEMO_PRODUCTS if not p.hot]


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    if any(not info.mode.is_positive for info in meta.components.values()):
        return  # some part of it is generated invalid: it goes out as generated
    if case.query and "cursor" in case.query:
        del case.query["cursor"]
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    path, method = case.operation.path, case.operation.method.upper()
    if path == "/v1/orders" and method == "POST" and isinstance(case.body, dict):
        # An unknown SKU is a 422 by a rule of the catalogue: valid cases buy demo products.
        for i, item in enumerate(case.body.get("items") or []):
            if isinstance(item, dict):
                item["sku"] = DEMO_SKUS[i % len(DEMO_SKUS)]
    if path.endswith("/refunds") and method == "POST" and isinstance(case.body, dict):
        # Restock lines must name the order's own items (a 422 otherwise): not knowable here.
        case.body.pop("restock", None)
    if path == WEBHOOK_PATH and isinstance(case.body, dict):
        # Signed over the bytes requests will send for ``json=body`` (json.dumps, allow_nan off).
        raw = json.dumps(case.body, allow_nan=False).encode("utf-8")
        if case.headers is None:
            case.headers = {}
        case.headers[SIGNATURE_HEADER] = sign(os.environ["SCHEMATHESIS_WEBHOOK_SECRET"], raw)

#!/usr/bin/env bash
# The README story, executed: play courier me-1 yourself against a running stack.
#
#   TRADEFLOW_COURIER_SIMULATOR=off make up     # in one terminal
#   scripts/story.sh                            # in another
#
# Clocks in courier me-1 exactly at the main store (so it is the nearest free courier and gets
# the offer), places an order, waits until the order is offered to me-1, sends accepted,
# picked_up and delivered as the courier app would, and shows the final order. The curl
# commands are the ones in README.md ("The story, with curl"); tests/integration/
# test_end_to_end.py runs this script against a stack and checks that the README shows them.
# It also works with the simulator on: the simulator plays only couriers k-*.
#
# Environment (defaults in brackets):
#   TRADEFLOW_API_URL     [http://127.0.0.1:$API_PORT, API_PORT 8000]  where the API answers
#   TRADEFLOW_ADMIN_TOKEN [contents of $TRADEFLOW_DATA_DIR/admin_token; data dir .data]
#   TRADEFLOW_CUSTOMER_TOKEN [`tradeflow token customer c-1` for the data dir's secret]
#                         customer c-1's JWT, sent when authentication is on (ignored when off)
#   STORY_KEY             [story-<time>-<pid>]  Idempotency-Key of the order
#   STORY_TIMEOUT_S       [90]  how long to wait for the offer to me-1
#
# Needs bash, curl (7.76+) and python3 (to pick fields out of JSON). Exits 0 once the order is
# DELIVERED, non-zero when a step fails (curl's 22 for an HTTP error, with the answer shown).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
API=${TRADEFLOW_API_URL:-http://127.0.0.1:${API_PORT:-8000}}
API=${API%/}
ADMIN_TOKEN=${TRADEFLOW_ADMIN_TOKEN:-}
if [[ -z $ADMIN_TOKEN ]]; then
  token_file=${TRADEFLOW_DATA_DIR:-$ROOT/.data}/admin_token
  if [[ ! -r $token_file ]]; then
    echo "story: set TRADEFLOW_ADMIN_TOKEN (no $token_file; has make up run?)" >&2
    exit 2
  fi
  ADMIN_TOKEN=$(<"$token_file")
fi
CUSTOMER_TOKEN=${TRADEFLOW_CUSTOMER_TOKEN:-}
if [[ -z $CUSTOMER_TOKEN ]]; then
  tradeflow_cli=$ROOT/.venv/bin/tradeflow
  [[ -x $tradeflow_cli ]] || tradeflow_cli=tradeflow
  CUSTOMER_TOKEN=$(TRADEFLOW_DATA_DIR=${TRADEFLOW_DATA_DIR:-$ROOT/.data} \
    "$tradeflow_cli" token customer c-1)
fi
KEY=${STORY_KEY:-story-$(date +%s)-$$}
TIMEOUT_S=${STORY_TIMEOUT_S:-90}

# The README's commands are plain `curl -s`; here an HTTP error also stops the story, with the
# problem body shown.
curl() { command curl --show-error --fail-with-body "$@"; }

# json <dotted.path>: the field of the JSON on stdin ("" for null or missing).
json() {
  python3 -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."): v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v)' "$1"
}

step() { printf '\n== %s\n' "$*"; }

step "1. courier me-1 clocks in at the main store"
curl -s -X PUT "$API/v1/admin/couriers/me-1" -H "X-Admin-Token: $ADMIN_TOKEN" \
  -H 'Content-Type: application/json' -d '{"lat": 31.2304, "lng": 121.4737, "available": true}'
echo
# The courier app's credential, issued by an operator (shown once; only its hash is stored).
COURIER_TOKEN=$(curl -s -X POST "$API/v1/admin/couriers/me-1/tokens" -H "X-Admin-Token: $ADMIN_TOKEN" | json token)

step "2. place an order (Idempotency-Key: $KEY)"
ORDER=$(curl -s -X POST "$API/v1/orders" -H "Authorization: Bearer $CUSTOMER_TOKEN" \
  -H 'Content-Type: application/json' -H "Idempotency-Key: $KEY" \
  -d '{"customer_id": "c-1", "location_id": "main",
       "items": [{"sku": "SKU-1", "quantity": 2}],
       "delivery": {"address": "1 Main St", "lat": 31.23, "lng": 121.47},
       "payment": {"token": "tok_ok"}}')
echo "$ORDER"
ORDER_ID=$(json order_id <<<"$ORDER")

step "3. wait until order $ORDER_ID is offered to me-1"
deadline=$((SECONDS + TIMEOUT_S))
last=""
while :; do
  ORDER=$(curl -s "$API/v1/orders/$ORDER_ID" -H "Authorization: Bearer $CUSTOMER_TOKEN")
  status=$(json status <<<"$ORDER")
  offered_to=$(json delivery.offered_to <<<"$ORDER")
  now="status=$status offered_to=${offered_to:-nobody}"
  [[ $now != "$last" ]] && echo "$now"
  last=$now
  [[ $offered_to == me-1 ]] && break
  case $status in DELIVERED | CANCELLED | FAILED | NEEDS_ATTENTION)
    echo "story: the order ended $status before it was offered to me-1:" >&2
    echo "$ORDER" >&2
    exit 1
    ;;
  esac
  if ((SECONDS >= deadline)); then
    echo "story: not offered to me-1 within ${TIMEOUT_S}s (another order may hold me-1):" >&2
    echo "$ORDER" >&2
    exit 1
  fi
  sleep 0.5
done

step "4. me-1 accepts, picks up and delivers"
for step in accepted picked_up delivered; do
  curl -s -X POST "$API/v1/deliveries/$ORDER_ID/events" -H "Authorization: Bearer $COURIER_TOKEN" \
    -H 'Content-Type: application/json' -d "{\"courier_id\": \"me-1\", \"type\": \"$step\"}"
  echo
done

step "5. the order"
# The delivered event is accepted before the workflow records DELIVERED; give it a moment.
deadline=$((SECONDS + 30))
until [[ $(json status <<<"$ORDER") == DELIVERED ]]; do
  if ((SECONDS >= deadline)); then
    echo "story: the order is not DELIVERED 30 s after the delivered event:" >&2
    echo "$ORDER" >&2
    exit 1
  fi
  sleep 0.2
  ORDER=$(curl -s "$API/v1/orders/$ORDER_ID" -H "Authorization: Bearer $CUSTOMER_TOKEN")
done
python3 -m json.tool <<<"$ORDER"
echo "story: order $ORDER_ID DELIVERED"

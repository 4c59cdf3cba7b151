#!/usr/bin/env bash
# Run a command with Redis answering on 127.0.0.1:${REDIS_TEST_PORT:-6379}.
# Uses a Redis that already answers there; otherwise starts a throwaway redis-server (no
# persistence) for the duration of the command and stops it afterwards. Exit status is the
# command's.
set -euo pipefail

port="${REDIS_TEST_PORT:-6379}"
python="${PYTHON_BIN:-.venv/bin/python}"

redis_answers() {
    "$python" - "$port" <<'PY' >/dev/null 2>&1
import sys, redis
redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), socket_connect_timeout=1, socket_timeout=1).ping()
PY
}

if redis_answers; then
    exec "$@"
fi

if ! command -v redis-server >/dev/null; then
    echo "with-redis: nothing answers on 127.0.0.1:$port and redis-server is not installed;" >&2
    echo "            tests that need Redis will fail (apt-get install redis-server)" >&2
    exec "$@"
fi

dir="$(mktemp -d)"
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    >"$dir/redis.log" 2>&1 &
redis_pid=$!
cleanup() {
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for _ in $(seq 1 50); do
    redis_answers && break
    if ! kill -0 "$redis_pid" 2>/dev/null; then
        echo "with-redis: redis-server did not start:" >&2
        cat "$dir/redis.log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "with-redis: started a throwaway redis-server on 127.0.0.1:$port (pid $redis_pid)" >&2

status=0
"$@" || status=$?
exit "$status"

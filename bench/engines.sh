#!/usr/bin/env bash
# The two client engines against the same server, interleaved: is the client the
# bottleneck, and how precisely does each hold an open-loop schedule?
#
#   bench/engines.sh [OUT.md]
#
# One ringbench epoll server (1 worker) on CPU 0; every client run on CPU 1. For each
# repeat, connection count and engine: a closed loop of at least 2 s (max req/s, and the
# client's own CPU per request), then an open loop at RATE req/s for 2 s after a 0.5 s
# warm-up (send lateness p99 and the corrected p99). Bounded: 3 repeats x 3 connection
# counts x 2 engines x 2 runs, each a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/dev/stdout}
RATE=${RATE:-20000}
REPEATS=${REPEATS:-3}
CONNS=${CONNS:-"100 1000 4000"}
PORT=${PORT:-7301}
cargo build --release --quiet
B=target/release/ringbench
TMP=$(mktemp -d)
SERVER=
cleanup() {
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n "$(ulimit -Hn)"
taskset -c 0 "$B" server --backend epoll --workers 1 --bind "127.0.0.1:$PORT" 2>"$TMP/server.err" &
SERVER=$!
for _ in $(seq 50); do grep -q "listening on" "$TMP/server.err" 2>/dev/null && break; sleep 0.1; done

# A number field of the JSON summary in $1 (nested objects: "corrected" then "p99_us").
flat() { tr -d ' \n' <"$1"; }
field() { flat "$1" | grep -o "\"$2\":[0-9.e+-]*" | head -1 | cut -d: -f2; }
nested() { flat "$1" | grep -o "\"$2\":{[^}]*}" | grep -o "\"$3\":[0-9.e+-]*" | cut -d: -f2; }

echo "| repeat | conns | engine | closed req/s | client CPU µs/req | open: sent req/s | send lateness p99 µs | corrected p99 µs | status |" >"$TMP/table"
echo "|---:|---:|---|---:|---:|---:|---:|---:|---|" >>"$TMP/table"
for r in $(seq "$REPEATS"); do
    for c in $CONNS; do
        for e in threads epoll; do
            j="$TMP/closed.json"
            taskset -c 1 "$B" client --server "127.0.0.1:$PORT" --connections "$c" --engine "$e" \
                --requests 100 --min-run-s 2 --json "$j" >/dev/null 2>"$TMP/client.err" || { cat "$TMP/client.err" >&2; exit 1; }
            rps=$(field "$j" throughput_rps)
            cpu=$(field "$j" client_cpu_s)
            req=$(field "$j" requests)
            cpu_us=$(awk -v c="$cpu" -v n="$req" 'BEGIN { printf "%.2f", c * 1e6 / n }')
            o="$TMP/open.json"
            taskset -c 1 "$B" client --server "127.0.0.1:$PORT" --connections "$c" --engine "$e" \
                --rate "$RATE" --duration 2 --warmup 0.5 --json "$o" >/dev/null 2>"$TMP/client.err" || { cat "$TMP/client.err" >&2; exit 1; }
            sent=$(field "$o" achieved_rate_rps)
            late=$(nested "$o" send_lateness p99_us)
            corr=$(nested "$o" corrected p99_us)
            status=$(flat "$o" | grep -o '"rate_status":"[a-z-]*"' | cut -d'"' -f4)
            printf "| %s | %s | %s | %.0f | %s | %.0f | %.0f | %.0f | %s |\n" \
                "$r" "$c" "$e" "$rps" "$cpu_us" "$sent" "$late" "$corr" "$status" >>"$TMP/table"
            echo "repeat $r, $c connections, $e engine done" >&2
        done
    done
done
{
    echo "Client engines against one ringbench epoll server (1 worker, CPU 0); clients on CPU 1; open loop at $RATE req/s."
    echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') · Linux $(uname -r) · $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    cat "$TMP/table"
} >"$OUT"

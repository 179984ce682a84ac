#!/usr/bin/env bash
# Instructions per request (valgrind callgrind): repeatable figures on a noisy shared machine.
# Runs bench/upstream.py, then each contender under callgrind; wrk drives 32 connections for
# 20 s after a warm-up, callgrind's counters are zeroed before and dumped after that run, and
# the user-space instructions are divided by the requests wrk completed.
#   bash bench/instructions.sh            # minimal forwarder, proxy (info), proxy (warning)
# Needs valgrind and wrk (apt-get install -y valgrind wrk). About 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
tmp=$(mktemp -d); trap 'rm -rf "$tmp"; kill $UP 2>/dev/null || true' EXIT
$PY bench/upstream.py --port 9101 >/dev/null 2>&1 & UP=$!
sleep 1

measure() {  # label, then the server command (it must listen on 127.0.0.1:9102)
    local label=$1; shift
    valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out" --log-file="$tmp/vg.log" \
        "$@" >/dev/null 2>"$tmp/server.err" & local sv=$!
    for _ in $(seq 1 300); do curl -s -o /dev/null http://127.0.0.1:9102/healthz && break; sleep 0.2; done
    wrk -t1 -c32 -d5s http://127.0.0.1:9102/v4.0/words/storage/disc >/dev/null
    callgrind_control -z "$sv" >/dev/null 2>&1
    local out; out=$(wrk -t1 -c32 -d20s --timeout 20s http://127.0.0.1:9102/v4.0/words/storage/disc)
    callgrind_control -d "$sv" >/dev/null 2>&1
    sleep 1; kill -TERM "$sv"; wait "$sv" 2>/dev/null || true
    local req ir
    req=$(grep -o '[0-9]* requests' <<<"$out" | grep -o '[0-9]*')
    ir=$(grep -h '^summary\|^totals' "$tmp"/cg.out.* | head -1 | awk '{print $2}')
    printf '%-16s %8d requests  %9d instructions/request\n' "$label" "$req" $((ir / req))
    rm -f "$tmp"/cg.out*
}

export ASPOSE_PROXY_UPSTREAM_URL=http://127.0.0.1:9101 ASPOSE_PROXY_CLIENT_ID=x \
    ASPOSE_PROXY_CLIENT_SECRET=bench-secret ASPOSE_PROXY_PORT=9102
measure minimal $PY bench/minimal_forwarder.py --upstream http://127.0.0.1:9101 --port 9102
ASPOSE_PROXY_LOG_LEVEL=info measure proxy .venv/bin/aspose-proxy run
ASPOSE_PROXY_LOG_LEVEL=warning measure proxy-quiet .venv/bin/aspose-proxy run

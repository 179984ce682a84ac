#!/usr/bin/env bash
# Instructions per request (valgrind callgrind): repeatable figures on a noisy shared machine.
# The work is done by bench/instructions.py (exact request counts, start-up uninstrumented,
# the CI smoke check); this keeps the old command:
#   bash bench/instructions.sh                   # minimal, proxy, proxy-open, proxy-quiet at c32
#   bash bench/instructions.sh --connections 1   # the deterministic one-connection figure
# Needs valgrind and wrk (apt-get install -y valgrind wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" bench/instructions.py \
    --contenders minimal,proxy,proxy-open,proxy-quiet "$@"

#!/usr/bin/env bash
# Run on a lent GPU machine (staged with ../shared/gpu) from the repo root:
#   bash tools/gpu/run.sh LABEL [pytest args...]
# Sets up the checkout there (tools/gpu/device_env.sh), runs pytest with the plugin, and leaves
# under $OUT: LABEL.log, LABEL-baselines.tgz (baselines/), LABEL-reports.tgz (.pytest_vllm/reports),
# LABEL-logs.tgz (the vLLM servers' own logs). RUN_TIMEOUT (s, default 560) bounds the whole pytest
# run so the results still come back inside the device's 600 s per call; PYTEST_TIMEOUT is
# pytest-timeout's per-test limit, which dumps the stacks of a stalled test before it is killed.
set -uo pipefail
label="$1"; shift
. tools/gpu/device_env.sh > "$OUT/$label-env.log" 2>&1 || { tail -20 "$OUT/$label-env.log"; exit 3; }
export PYTEST_PLUGINS=pytest_vllm.plugin   # also for inner pytest sessions (the package is not installed there)
timeout "${RUN_TIMEOUT:-560}" python3 -m pytest -p no:cacheprovider "$@" 2>&1 | tee "$OUT/$label.log" \
    | grep -v -E '^\[vllm\] .*(run [0-9]+/[0-9]+:|still booting)' | tail -"${TAIL:-70}"
rc=${PIPESTATUS[0]}
tar czf "$OUT/$label-baselines.tgz" baselines 2>/dev/null
tar czf "$OUT/$label-reports.tgz" .pytest_vllm/reports 2>/dev/null
tar czf "$OUT/$label-logs.tgz" .pytest_vllm/logs 2>/dev/null
exit "$rc"

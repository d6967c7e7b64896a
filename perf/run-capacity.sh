#!/usr/bin/env bash
# Sweeps siprec-bench over concurrent call counts (two G.711 streams each) against a spawned
# release server with one data-plane worker, and tabulates server CPU per packet, the floor
# receiver's, their ratio, derived streams per core, RSS per call, and packets lost (sequence
# gaps) and dropped because the recorder's ring was full.
# Usage: perf/run-capacity.sh [calls ...]   (default: 250 500 1000 2000)
# Results: perf/results/capacity-<calls>.json and a table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then steps=("$@"); else steps=(250 500 1000 2000); fi
cargo build --release --bin siprec --bin siprec-bench >/dev/null
mkdir -p perf/results
printf "%-7s %-8s %-9s %-10s %-10s %-7s %-12s %-10s %-6s %-9s\n" \
  calls streams pps server_ns floor_ns ratio streams/core rss_kib lost ring_full
for calls in "${steps[@]}"; do
  out="perf/results/capacity-$calls.json"
  ./target/release/siprec-bench --spawn target/release/siprec --calls "$calls" \
    --rate 400 --duration "${DURATION:-10}" --backend "${BACKEND:-auto}" --json "$out" \
    >/dev/null 2>&1
  python3 - "$out" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
f = lambda x, d=0: "-" if x is None else f"{x:.{d}f}"
print(f"{v['answered']:<7} {v['streams']:<8} {f(v['packets_per_s']):<9} "
      f"{f(v['server_cpu_ns_per_packet']):<10} {f(v['floor_cpu_ns_per_packet']):<10} "
      f"{f(v['server_to_floor_ratio'], 2):<7} {f(v['derived_streams_per_core']):<12} "
      f"{f(v['server_rss_kib_per_call']):<10} {v['packets_lost_reported_by_server']:<6} "
      f"{v.get('packets_dropped_ring_full')}")
PY
done
python3 perf/plot.py perf/results perf/results/capacity.svg

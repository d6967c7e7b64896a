#!/usr/bin/env bash
# SIPREC call-setup rate with SIPp against a release build, one data-plane worker.
# Each step runs SIPp's uac_setup scenario (INVITE with SDP + metadata, 200, ACK, BYE, 200)
# at a fixed call rate for 10 s and reports successful/failed calls and the rate SIPp achieved.
# Both programs share this machine, so the figures are a floor, not the server's ceiling.
# Usage: [RTP_PORT_COOLDOWN=s] perf/sipp-setup-rate.sh [rate ...]   (default: 100 200 400 800)
# With the default 5 s port cooldown, 12,000 RTP ports carry at most 6,000 streams in 5 s:
# above ~600 two-stream calls/s INVITEs get 503 for lack of ports, as they should.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then rates=("$@"); else rates=(100 200 400 800); fi
cargo build --release --bin siprec >/dev/null
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
SIP_HOST=127.0.0.1 PORTS=15060 HTTP_PORT=18080 RTP_PORT_MIN=20000 RTP_PORT_MAX=31999 \
  RECORDING_DIR="$work/rec" RTP_PORT_COOLDOWN="${RTP_PORT_COOLDOWN:-5}" DATAPLANE_WORKERS=1 MAX_CONCURRENT_CALLS=10000 RUST_LOG=warn \
  ./target/release/siprec 2>"$work/server.log" &
server=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/health/ready >/dev/null && break; sleep 0.1; done
printf "%-10s %-10s %-8s %-14s\n" "rate(cps)" "calls" "failed" "achieved(cps)"
for rate in "${rates[@]}"; do
  calls=$((rate * 10))
  sipp -sf tests/sipp/uac_setup.xml -r "$rate" -m "$calls" -l 2000 -timeout 120s -nostdin \
    -p 15100 -mp 16000 -trace_screen -screen_file "$work/screen" 127.0.0.1:15060 \
    >/dev/null 2>&1 || true
  ok=$(grep "Successful call" "$work/screen" | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  failed=$(grep "Failed call" "$work/screen" | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  achieved=$(grep "Call Rate" "$work/screen" | awk -F'|' '{print $3}' | awk '{print $1}')
  printf "%-10s %-10s %-8s %-14s\n" "$rate" "${ok:-?}" "${failed:-?}" "${achieved:-?}"
  sleep 6 # Let released RTP ports finish their cooldown before the next step.
done

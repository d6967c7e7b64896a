#!/usr/bin/env bash
# Runs every fuzz target (src/fuzz.rs) under libFuzzer for SECONDS each (default 60), seeded
# from the vendor golden INVITEs. Needs a nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). Crashes land in fuzz/artifacts/<target>/; replay one with
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#   FUZZ_RUNS=N fuzz/run.sh        N inputs per target from a fixed seed: deterministic, for CI
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(sip_message sip_stream sip_transactions sdp metadata
  multipart rtp rtcp srtp)
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  for g in ../tests/golden/*/invite.sip; do
    cp -n "$g" "corpus/$t/$(basename "$(dirname "$g")").sip" 2>/dev/null || true
  done
  if [ -n "${FUZZ_RUNS:-}" ]; then
    echo "--- fuzz $t: $FUZZ_RUNS inputs from seed 1"
    limit=(-runs="$FUZZ_RUNS" -seed=1)
  else
    echo "--- fuzz $t for ${secs}s"
    limit=(-max_total_time="$secs")
  fi
  cargo +nightly fuzz run --sanitizer none "$t" "corpus/$t" -- "${limit[@]}" -rss_limit_mb=2048
done

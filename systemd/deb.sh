#!/usr/bin/env bash
# Builds the Debian package with cargo-deb: binaries, the systemd unit, the default
# configuration in /etc/siprec, the sysctl file, man pages and completions, docs.
#
#   systemd/deb.sh                 release build, then target/debian/siprec_<version>_<arch>.deb
#   systemd/deb.sh --dev DIR       package the debug binaries already built (the test suite's,
#                                  no build, fast compression) into DIR
#
# Needs cargo-deb and dpkg-dev (.ci/deps.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

profile=release
out=target/debian
if [ "${1:-}" = --dev ]; then
    profile=dev
    out=${2:?usage: systemd/deb.sh --dev DIR}
else
    cargo build --locked --release --bins
fi
bin=target/$([ "$profile" = dev ] && echo debug || echo release)

# Generated from siprecctl's own CLI definition, like the binary prints them.
mkdir -p target/deb
"$bin/siprecctl" man > target/deb/siprecctl.1
"$bin/siprecctl" completions bash > target/deb/siprecctl.bash

args=(--no-build --profile "$profile" --output "$out")
[ "$profile" = dev ] && args+=(--fast --no-strip)
cargo deb "${args[@]}"

#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs the real SIP
# peers the tests talk to (SIPp, Kamailio), then builds and runs every test.
# The tests start Kamailio themselves (own config, free loopback ports, foreground);
# the Debian package's system service is not used.
# Needs root (or sudo) for apt-get; PostgreSQL is expected on 127.0.0.1:5432
# (trust auth, database `test`) for the PostgreSQL half of the store tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v kamailio >/dev/null 2>&1 || [ -x /usr/sbin/kamailio ] || need+=(kamailio)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# Benchmarks are built (so they cannot rot) but run by hand: see BENCHMARKS.md.
cargo build --locked --benches
cargo test --locked --lib --bins --tests -- --test-threads=4

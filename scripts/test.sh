#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs the real peers the
# tests talk to (SIPp, Kamailio, PostgreSQL, baresip, linphonec, Twinkle, SIPVicious) and headless
# Chromium (the dashboard test), then builds and runs every test.
# The tests start Kamailio themselves (own config, free loopback ports, foreground);
# the Debian package's system service is not used.
#
# PostgreSQL: when a server answers on 127.0.0.1:5432 (trust auth, database `test`)
# the tests use it. Otherwise this script starts a throwaway cluster of its own (own
# data dir and port, trust auth, database `test`; as the postgres user when run as
# root), points the tests at it with OTPDIAL_TEST_PG and removes it at exit. The
# initdb/pg_ctl binaries are needed either way: tests/it/tempgres.rs starts servers
# of its own for the tests that stop the database under a running gateway.
#
# Needs root (or sudo) for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# The newest /usr/lib/postgresql/<version>/bin with initdb and pg_ctl, or nothing.
pg_bin() {
  local d v best="" bestv=-1
  for d in /usr/lib/postgresql/*/bin; do
    v="$(basename "$(dirname "$d")")"
    [[ "$v" =~ ^[0-9]+$ ]] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] || continue
    if [ "$v" -gt "$bestv" ]; then best="$d"; bestv="$v"; fi
  done
  echo "$best"
}

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Decided before installing anything: the Debian package may start a cluster of its
# own on 5432, with password auth, which the tests cannot use.
shared_pg=false
answers 5432 && shared_pg=true

need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v kamailio >/dev/null 2>&1 || [ -x /usr/sbin/kamailio ] || need+=(kamailio)
command -v baresip >/dev/null 2>&1 || need+=(baresip-core)
# The QA softphones of tests/it/softphone.rs: Linphone's console client and Twinkle.
command -v linphonec >/dev/null 2>&1 || need+=(linphone-cli)
command -v twinkle >/dev/null 2>&1 || need+=(twinkle)
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
ls /usr/lib/*/kamailio/modules/tls.so >/dev/null 2>&1 || need+=(kamailio-tls-modules)
command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
[ -n "$(pg_bin)" ] || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# SIPVicious (svmap, svwar, svcrack) attacks the SIP listener in tests/it/sip_policy.rs;
# libsrtp (pylibsrtp) is the SRTP peer of tests/it/media_srtp.rs.
if ! command -v sipvicious_svmap >/dev/null 2>&1 || ! python3 -c 'import pylibsrtp' 2>/dev/null; then
  python3 -m pip install --quiet sipvicious pylibsrtp 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages sipvicious pylibsrtp
fi

if [ "$shared_pg" = true ]; then
  echo "test.sh: using the PostgreSQL server on 127.0.0.1:5432"
else
  bin="$(pg_bin)"
  [ -n "$bin" ] || { echo "test.sh: no initdb after installing postgresql" >&2; exit 1; }
  as_pg=()
  if [ "$(id -u)" -eq 0 ]; then
    as_pg=(runuser -u postgres --)
  fi
  port=15432
  while answers "$port"; do port=$((port + 1)); done
  pgdir="$(mktemp -d "${TMPDIR:-/tmp}/otpdial-test-pg.XXXXXX")"
  [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$pgdir"
  # pg PROGRAM ARGS...: one PostgreSQL program, in its dir, as its user.
  pg() { (cd "$pgdir" && "${as_pg[@]}" "$bin/$1" "${@:2}"); }
  stop_pg() {
    pg pg_ctl -D "$pgdir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$pgdir"
  }
  trap stop_pg EXIT
  pg initdb -D "$pgdir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
  pg pg_ctl -D "$pgdir/data" -l "$pgdir/postgres.log" -w -t 60 \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$pgdir -c fsync=off -c synchronous_commit=off -c max_connections=300" \
    start >/dev/null
  pg createdb -h 127.0.0.1 -p "$port" -U postgres test
  export OTPDIAL_TEST_PG="postgres://postgres@127.0.0.1:$port"
  echo "test.sh: started a throwaway PostgreSQL at $OTPDIAL_TEST_PG (data in $pgdir)"
fi

# Fuzzing, 1 of 2 (fuzz/README.md): cargo-fuzz and the fuzz targets are built in the
# background at the lowest priority, on CPU the main build and the tests leave idle;
# part 2 below waits for it. FUZZ_SMOKE=0 skips fuzzing.
fuzz_build_log="$(mktemp "${TMPDIR:-/tmp}/otpdial-fuzz-build.XXXXXX")"
nice -n 19 scripts/fuzz-smoke.sh build >"$fuzz_build_log" 2>&1 &
fuzz_build_pid=$!

# Benchmarks are built (so they cannot rot) but run by hand: see BENCHMARKS.md.
cargo build --locked --benches
cargo test --locked --lib --bins --tests -- --test-threads=4

# Fuzzing, 2 of 2: every cargo-fuzz target for a short bounded time on its committed
# corpus (FUZZ_SECONDS each, default 20); fails on a crash. Skips, saying why, where
# cargo-fuzz cannot be installed. A failed background build is redone here, visibly.
# The corpus replay above (tests/it/fuzz_corpus.rs) runs every committed input anyway.
wait "$fuzz_build_pid" || true
cat "$fuzz_build_log" && rm -f "$fuzz_build_log"
scripts/fuzz-smoke.sh run

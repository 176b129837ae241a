#!/bin/sh
# The demo phone (docker/compose.yaml's `phone` service): baresip with the config
# beside this script, the account `phone` at the demo trunk with its password from
# PHONE_PASSWORD, auto-answer, and the audio it hears recorded as WAV files under
# RECORDINGS. Extra arguments go to baresip (e.g. -t 60 to quit after a minute).
#
#   PHONE_PASSWORD  required; the demo trunk (docker/kamailio.cfg) checks it
#   TRUNK_ADDRESS   where the trunk listens (default 127.0.0.1:5060: compose runs the
#                   trunk, the phone and otpdial in one network namespace)
#   RECORDINGS      folder for the WAV files (default /var/lib/baresip/recordings)
#
# The test suite runs this same script outside containers (tests/it/docker_configs.rs).
set -eu
: "${PHONE_PASSWORD:?PHONE_PASSWORD must hold the demo phone password}"
trunk="${TRUNK_ADDRESS:-127.0.0.1:5060}"
recordings="${RECORDINGS:-/var/lib/baresip/recordings}"
here="$(cd "$(dirname "$0")" && pwd)"
# A fresh home for baresip (config + accounts); inside TMPDIR, which the test suite
# points at its own temp dir.
home="$(mktemp -d "${TMPDIR:-/tmp}/baresip.XXXXXX")"
mkdir -p "$recordings"
cp "$here/config" "$home/config"
printf 'snd_path\t\t%s\n' "$recordings" >>"$home/config"
umask 077
printf '<sip:phone@%s;transport=udp>;auth_pass=%s;answermode=auto;regint=300\n' \
  "$trunk" "$PHONE_PASSWORD" >"$home/accounts"
: >"$home/contacts"
exec baresip -f "$home" "$@"

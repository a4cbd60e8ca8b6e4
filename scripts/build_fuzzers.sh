#!/usr/bin/env bash
# Builds the libFuzzer targets with clang-14 in build-fuzz/ (no LibTorch: they cover the
# file parsers, which live in iris_base).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f build-fuzz/build.ninja ]; then
  CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DIRIS_TORCH=OFF -DIRIS_BUILD_TESTS=OFF -DIRIS_BUILD_BENCH=OFF -DIRIS_BUILD_FUZZERS=ON >/dev/null
fi
cmake --build build-fuzz -j "${IRIS_JOBS:-$(nproc)}" | grep -vE '^\[[0-9]+/[0-9]+\] (Building|Linking)' || true
test "${PIPESTATUS[0]}" -eq 0

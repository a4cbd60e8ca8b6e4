#!/usr/bin/env bash
# Installs every Debian package Iris needs (idempotent; silent when all is there), then
# configures and builds. Usage: scripts/setup.sh [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build pkg-config ccache git
  libtorch-dev libopenblas0-pthread   # LibTorch 1.13 CPU; OpenBLAS, or it falls back to slow reference BLAS
  nlohmann-json3-dev libcli11-dev libstb-dev libutf8proc-dev zlib1g-dev
  libsentencepiece-dev sentencepiece  # only for the cross-check test and tokenizer training tool
  libgtest-dev libgmock-dev libbenchmark-dev
  clang-14 libclang-rt-14-dev         # libFuzzer targets
  libimgui-dev libglfw3-dev xvfb libgl1-mesa-dri   # iris-studio (Mesa software GL under Xvfb)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ "${1:-}" = "--no-build" ] || exec scripts/build.sh

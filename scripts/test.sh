#!/usr/bin/env bash
# The README's test command. Sets up what the tests need when it is missing:
#  - lavapipe (Mesa's CPU Vulkan driver) so the GPU tests have an adapter;
#  - a virtualenv with ONNX Runtime so what repfuse writes is checked by ORT.
# When a piece cannot be set up (no root, no network), the tests that need it skip
# with a loud message; CI sets REPFUSE_REQUIRE_GPU=1 and REPFUSE_REQUIRE_ORT=1 so
# nothing skips there.
set -euo pipefail
cd "$(dirname "$0")/.."

have_lavapipe() { ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; }
if ! have_lavapipe; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo ">> installing mesa-vulkan-drivers (lavapipe)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers >/dev/null
  else
    echo "!! lavapipe missing and cannot install it (need root + apt): GPU tests will SKIP" >&2
  fi
fi

if [ -z "${REPFUSE_PYTHON:-}" ] && ! .venv/bin/python -c "import onnxruntime, onnx, numpy" 2>/dev/null; then
  echo ">> creating .venv with onnxruntime and onnx"
  if python3 -m venv .venv && .venv/bin/pip install -q onnxruntime onnx numpy; then :; else
    echo "!! could not create the ONNX Runtime virtualenv: ORT tests will SKIP" >&2
  fi
fi

# Keep GPU tests (lavapipe runs on these CPU cores) to two threads.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo test --release "$@"

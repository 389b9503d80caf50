#!/usr/bin/env bash
# The README's test command: `cargo test --release` and the Python package's tests
# (scripts/test_python.sh), after setting up what the tests need when it is missing:
#  - lavapipe (Mesa's CPU Vulkan driver) so the GPU tests have an adapter (needs root + apt);
#  - a virtualenv .venv with ONNX Runtime so what repfuse writes is checked by ORT (needs python3).
# A test that needs a missing piece never passes silently: it fails if it runs. So
# when a piece is missing this script leaves those tests out by name (GPU tests are
# named gpu_*, ONNX Runtime tests onnxruntime_*) and prints a loud NOT RUN line at
# the end. REPFUSE_REQUIRE_GPU=1 / REPFUSE_REQUIRE_ORT=1 (set by .ci/run) turn a
# missing piece into a failure instead.
# The real-model corpus (timm exports, not in the repository) is tested when
# REPFUSE_MODELS names its folder (e.g. REPFUSE_MODELS=../shared/fixtures); its tests
# are #[ignore]d otherwise and libtest lists them as ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

have_lavapipe() { ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; }
if ! have_lavapipe; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo ">> installing mesa-vulkan-drivers (lavapipe)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers >/dev/null || true
  fi
fi

if [ -z "${REPFUSE_PYTHON:-}" ] && ! .venv/bin/python -c "import onnxruntime, onnx, numpy" 2>/dev/null; then
  echo ">> creating .venv with onnxruntime and onnx"
  python3 -m venv .venv && .venv/bin/pip install -q onnxruntime onnx numpy || true
fi

not_run=()
args=()
cargo build --release --bin repfuse
adapters="$(./target/release/repfuse adapters --json 2>/dev/null || true)"
if grep -q '"name"' <<<"$adapters"; then
  echo ">> GPU adapter: $(grep -m1 '"name"' <<<"$adapters")"
elif [ "${REPFUSE_REQUIRE_GPU:-}" = 1 ]; then
  echo "!! REPFUSE_REQUIRE_GPU=1 but wgpu finds no adapter (install mesa-vulkan-drivers)" >&2; exit 1
else
  args+=(--skip gpu_); not_run+=("GPU tests (gpu_*): no wgpu adapter; install mesa-vulkan-drivers as root")
fi
py="${REPFUSE_PYTHON:-.venv/bin/python}"
if ! "$py" -c "import onnxruntime, onnx, numpy" 2>/dev/null; then
  if [ "${REPFUSE_REQUIRE_ORT:-}" = 1 ]; then
    echo "!! REPFUSE_REQUIRE_ORT=1 but $py has no onnxruntime" >&2; exit 1
  fi
  args+=(--skip onnxruntime_); not_run+=("ONNX Runtime tests (onnxruntime_*): no Python with onnxruntime")
fi
if [ -n "${REPFUSE_MODELS:-}" ]; then
  [ -d "$REPFUSE_MODELS" ] || { echo "!! REPFUSE_MODELS=$REPFUSE_MODELS is not a folder" >&2; exit 1; }
  REPFUSE_MODELS="$(cd "$REPFUSE_MODELS" && pwd)"; export REPFUSE_MODELS
  args+=(--include-ignored)
else
  not_run+=("real-model corpus tests (corpus_*, listed as ignored): set REPFUSE_MODELS=<folder of the timm fixtures>")
fi

# Keep GPU tests (lavapipe runs on these CPU cores) to two threads.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"
status=0
cargo test --release --no-fail-fast "$@" -- "${args[@]}" || status=$?
# The Python package: wheel built with maturin, installed in a fresh venv, tested
# against the fixtures and ONNX Runtime (scripts/test_python.sh).
if python3 -c "import venv, ensurepip" 2>/dev/null; then
  ./scripts/test_python.sh || status=$?
elif [ "${REPFUSE_REQUIRE_ORT:-}" = 1 ]; then
  echo "!! REPFUSE_REQUIRE_ORT=1 but python3 cannot make a venv for the Python package tests" >&2; status=1
else
  not_run+=("Python package tests (python/tests): python3 cannot make a venv (install python3-venv)")
fi
for n in "${not_run[@]}"; do
  echo "!!!!!!!! NOT RUN: $n" >&2
done
exit $status

#!/usr/bin/env bash
# The Python package end to end: build the wheel with maturin (python/, pyo3), install
# it into a fresh venv with onnx, onnxruntime, numpy and pytest, and run
# python/tests against the fixtures (and $REPFUSE_MODELS when set).
# REPFUSE_WHEEL_PROFILE picks the cargo profile (default release: what `pip install`
# builds, and what `cargo test --release` already compiled most dependencies in).
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
tools=target/py-build
wheels=target/wheels
venv=target/py-test
if ! [ -x "$tools/bin/maturin" ]; then
  python3 -m venv "$tools" && "$tools/bin/pip" install -q 'maturin>=1.5,<2'
fi
rm -rf "$wheels" "$venv"
"$tools/bin/maturin" build --quiet -m python/Cargo.toml --profile "${REPFUSE_WHEEL_PROFILE:-release}" --strip --out "$wheels"
wheel="$(ls "$wheels"/repfuse-*.whl)"
echo ">> built $wheel ($(du -k "$wheel" | cut -f1) KiB)"
python3 -m venv "$venv"
"$venv/bin/pip" install -q "$wheel" onnx onnxruntime numpy pytest
"$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests "$@"

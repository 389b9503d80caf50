#!/usr/bin/env bash
# Seed corpora from the PyTorch-exported fixtures (small ones; RepVGG-A0 is 33 MB).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/onnx_reader corpus/native_reader corpus/rewrite
for f in ../tests/data/fixtures/*/train.onnx; do
  [ "$(stat -c %s "$f")" -lt 1000000 ] && cp "$f" "corpus/onnx_reader/$(basename "$(dirname "$f")").onnx"
done
printf '\x03\x05\x07\x01\x01\x02\x00\x04\x01\x01\x03\x00' > corpus/rewrite/seed0
echo seeded

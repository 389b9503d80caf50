#!/usr/bin/env bash
# The GPU benchmark in one run, for a machine lent with a real GPU (or any adapter):
# weight-kernel plans of repvgg_a0, repvgg_b0 and mobileone_s0 (each kernel's GB/s
# next to a device copy of the same bytes in the same run), the WGSL conv against
# the CPU reference, and the GPU forward check. Writes
# benches/results/<adapter>.json (named by the adapter) and prints the tables.
# Under 5 minutes on lavapipe (2 cores); seconds on a GPU.
#
#   benches/gpu.sh                 # builds target/release/repfuse with cargo when it can
#   REPFUSE_BIN=/path/repfuse benches/gpu.sh
#
# Machines without a Vulkan loader: unpack loader .debs kept in .gl/ (see the device
# notes: libvulkan1 and friends, downloaded where apt can reach a mirror), and point
# at NVIDIA's ICD when the container has it but does not register it.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
if ! ldconfig -p 2>/dev/null | grep -q libvulkan; then
  if ls .gl/*.deb >/dev/null 2>&1; then
    echo ">> no Vulkan loader: unpacking .gl/*.deb"
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
  else
    echo "!! no Vulkan loader (libvulkan) and no .gl/*.deb to unpack: wgpu may find no adapter" >&2
  fi
fi
nv_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nv_icd" ]; then
  export VK_DRIVER_FILES="$nv_icd"
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
bin="${REPFUSE_BIN:-target/release/repfuse}"
if [ -z "${REPFUSE_BIN:-}" ] && command -v cargo >/dev/null; then
  # Always through cargo (a no-op when fresh): a binary left by an older build, or
  # by `cargo test` with an edited shader, would be measured instead.
  cargo build --release --bin repfuse
fi
[ -x "$bin" ] || { echo "!! no $bin and no cargo to build it" >&2; exit 1; }
echo ">> adapters"
"$bin" adapters
echo ">> GPU benchmark (plans, kernels, conv), saved under benches/results/"
start=$(date +%s)
timeout 290 "$bin" bench --backend gpu --reps "${REPS:-5}" --save
echo ">> forward on the GPU against the CPU reference"
timeout 120 "$bin" demo --backend gpu --size 64 -q --json | grep -E '"(backend_reason|passed)"' || true
echo ">> done in $(( $(date +%s) - start )) s"

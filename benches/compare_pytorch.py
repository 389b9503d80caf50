"""repfuse next to timm's own re-parameterization, measured in the same run.

Two comparisons per model (repvgg_a0, repvgg_b0, mobileone_s0):
- in memory: timm's `reparameterize_model` on a model already built, against
  repfuse's rewrite + CPU weight arithmetic on the same architecture (`repfuse bench`);
- end to end: the whole `repfuse fuse FILE -o OUT` command on the timm export of the
  model (`repfuse bench --onnx`, found under $REPFUSE_MODELS/<model>/train.onnx),
  with its stages and a page-cache copy of the same bytes as the floor.

Needs torch and timm (pip install torch timm); without them it says so and exits 0.

    python benches/compare_pytorch.py [--threads 2] [--reps 5]
"""
import argparse
import json
import os
import subprocess
import sys
import time

MODELS = ["repvgg_a0", "repvgg_b0", "mobileone_s0"]


def timm_ms(name, reps, threads):
    import copy

    import timm
    import torch
    from timm.utils.model import reparameterize_model

    torch.set_num_threads(threads)
    model = timm.create_model(name, pretrained=False).eval()
    times = []
    for _ in range(reps):
        m = copy.deepcopy(model)
        t = time.perf_counter()
        reparameterize_model(m)
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]


def repfuse(*args):
    cmd = ["cargo", "run", "--release", "--quiet", "--", "bench", "--backend", "cpu", "--json", *args]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        print(f"torch/timm not installed ({e}); nothing to compare")
        return 0
    reps = ["--reps", str(args.reps)]
    ours = {m["model"]: m for m in repfuse(*reps, *sum((["--model", m] for m in MODELS), []))["models"]}
    root = os.environ.get("REPFUSE_MODELS", "")
    files = {m: os.path.join(root, m, "train.onnx") for m in MODELS if root and os.path.isfile(os.path.join(root, m, "train.onnx"))}
    e2e = {}
    if files:
        doc = repfuse(*reps, *sum((["--onnx", f] for f in files.values()), []))
        e2e = {m: next(f for f in doc["files"] if f["file"] == path) for m, path in files.items()}
    # "command": `repfuse fuse` writing a new file; "replacing": over an existing one
    # (ext4 then flushes the new file inside the rename, see src/io/atomic.rs).
    print(f"{'model':<14} {'timm ms':>8} {'in-memory ms':>13} {'speedup':>8} {'command ms':>11} {'vs timm':>8} {'replacing ms':>13} {'vs timm':>8} {'copy ms':>8} {'vs copy':>8} {'RSS/file':>9}")
    for name in MODELS:
        t = timm_ms(name, args.reps, args.threads)
        r = ours[name]["cpu_fuse_ms"]
        row = f"{name:<14} {t:>8.1f} {r:>13.1f} {t / r:>7.1f}x"
        f = e2e.get(name)
        if f:
            row += f" {f['command_ms']:>11.1f} {f['command_ms'] / t:>7.2f}x {f['command_replace_ms']:>13.1f} {f['command_replace_ms'] / t:>7.2f}x {f['copy_ms']:>8.1f} {f['command_ms'] / f['copy_ms']:>7.2f}x {f['rss_ratio_to_file']:>8.2f}x"
        print(row)
    if not files:
        print("(no timm exports under $REPFUSE_MODELS: end-to-end columns left out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

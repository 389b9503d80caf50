"""Times timm's re-parameterization of the zoo architectures next to `repfuse bench`
on the same machine and prints the ratio. Needs torch and timm (pip install torch
timm); without them it says so and exits 0.

    python benches/compare_pytorch.py [--threads 2] [--reps 5]
"""
import argparse
import json
import subprocess
import sys
import time

MODELS = {"repvgg_a0": "repvgg_a0", "repvgg_b0": "repvgg_b0", "mobileone_s0": "mobileone_s0"}


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
    out = subprocess.run(["cargo", "run", "--release", "--quiet", "--", "bench", "--backend", "cpu", "--json", "--reps", str(args.reps)] + sum((["--model", m] for m in MODELS), []), check=True, capture_output=True, text=True)
    ours = {m["model"]: m for m in json.loads(out.stdout)["models"]}
    print(f"{'model':<14} {'timm ms':>9} {'repfuse ms':>11} {'speedup':>8}")
    for ours_name, timm_name in MODELS.items():
        t = timm_ms(timm_name, args.reps, args.threads)
        r = ours[ours_name]["cpu_fuse_ms"]
        print(f"{ours_name:<14} {t:>9.1f} {r:>11.1f} {t / r:>7.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

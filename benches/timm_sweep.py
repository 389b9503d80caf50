"""repfuse on timm models it has never seen, next to timm's own deploy form.

For each model name: build it with random weights and random BN statistics (so a
wrong fold shows), export its training form to ONNX the way the fixtures were
exported (opset 17, BN kept, no constant folding), run
`repfuse fuse train.onnx -o repfuse.onnx --verify`, load what repfuse wrote in ONNX
Runtime and compare its output with the training form's on a random input, and
export timm's `reparameterize_model` result for its node and conv counts.

The fixtures hold one model of 7 of timm's 13 re-parameterizing families; this is
how the others (and larger variants) are checked without storing 100 MB of ONNX per
model. Needs torch, timm, onnx and onnxruntime; without them it says so and exits 0.

    python benches/timm_sweep.py [--out DIR] [--repfuse BIN] MODEL...
    python benches/timm_sweep.py --families      # one model of each family

Writes DIR/<model>/{train,deploy,repfuse}.onnx and fuse.log, prints one table row
per model, and exits 1 if any model fails to fuse, verify or load.
"""
import argparse
import collections
import os
import subprocess
import sys

# One small model of each timm family with its own re-parameterization code.
FAMILIES = [
    "repvgg_a0", "mobileone_s0", "fastvit_t8", "fastvit_sa12", "repghostnet_050",
    "ghostnetv3_050", "repvit_m0_9", "levit_128s", "efficientvit_m0", "tiny_vit_5m_224",
    "shvit_s1", "iformer_t", "lcnetv2_small", "efficientvim_m1",
]


def export(model, x, path):
    import onnx
    import torch

    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, training=torch.onnx.TrainingMode.PRESERVE,
                      do_constant_folding=False, input_names=["input"], output_names=["output"])
    g = onnx.load(path, load_external_data=False).graph
    return collections.Counter(n.op_type for n in g.node)


def randomize_bn(model, torch):
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.3, 0.3)


def sweep_one(name, out, repfuse):
    import numpy as np
    import onnxruntime as ort
    import timm
    import torch
    from timm.utils.model import reparameterize_model

    torch.manual_seed(0)
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    model = timm.create_model(name, pretrained=False).eval()
    randomize_bn(model, torch)
    x = torch.randn(1, *model.pretrained_cfg.get("input_size", (3, 224, 224)))
    train = export(model, x, os.path.join(d, "train.onnx"))
    deploy = export(reparameterize_model(model), x, os.path.join(d, "deploy.onnx"))
    with open(os.path.join(d, "fuse.log"), "w") as log:
        rc = subprocess.run([repfuse, "fuse", os.path.join(d, "train.onnx"), "-o", os.path.join(d, "repfuse.onnx"),
                             "--backend", "cpu", "--verify"], stdout=log, stderr=subprocess.STDOUT).returncode
    row = {"model": name, "train": sum(train.values()), "timm": sum(deploy.values()), "conv_timm": deploy.get("Conv", 0), "rc": rc}
    if rc != 0:
        return row
    import onnx

    ours = onnx.load(os.path.join(d, "repfuse.onnx"), load_external_data=False).graph
    row["repfuse"] = len(ours.node)
    row["conv_repfuse"] = sum(n.op_type == "Conv" for n in ours.node)
    feed = {"input": x.numpy()}
    want = ort.InferenceSession(os.path.join(d, "train.onnx")).run(None, feed)[0]
    got = ort.InferenceSession(os.path.join(d, "repfuse.onnx")).run(None, feed)[0]
    row["ort_rel"] = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--families", action="store_true", help="one model of each re-parameterizing family")
    ap.add_argument("--out", default="target/timm_sweep")
    ap.add_argument("--repfuse", default="target/release/repfuse")
    args = ap.parse_args()
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        print(f"torch/timm/onnx/onnxruntime not installed ({e}); nothing to sweep")
        return 0
    models = args.models + (FAMILIES if args.families else [])
    print(f"{'model':<18} {'train':>6} {'timm':>6} {'repfuse':>8} {'conv timm':>10} {'conv ours':>10} {'ORT rel err':>12}  result")
    failed = 0
    for name in models:
        r = sweep_one(name, args.out, args.repfuse)
        ok = r["rc"] == 0 and r["ort_rel"] < 1e-4
        failed += not ok
        ours = (r.get("repfuse", "-"), r.get("conv_repfuse", "-"), f"{r['ort_rel']:.1e}" if "ort_rel" in r else "-")
        print(f"{name:<18} {r['train']:>6} {r['timm']:>6} {ours[0]:>8} {r['conv_timm']:>10} {ours[1]:>10} {ours[2]:>12}  "
              f"{'ok' if ok else 'FAILED (see ' + os.path.join(args.out, name, 'fuse.log') + ')'}")
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

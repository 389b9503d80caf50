# Used in session 17: scripts/export_timm_dynamo.py MODEL... then check with repfuse fuse --verify and ONNX Runtime.
"""Exports timm models with torch.onnx.export's default (dynamo) exporter, eval mode,
then reports PyTorch's deploy conv count and saves input/output for checking."""
import copy, json, os, sys, collections
import numpy as np, torch, timm, onnx
from timm.utils.model import reparameterize_model
torch.manual_seed(0)
OUT = "/tmp/dyn"
for name in sys.argv[1:]:
    d = os.path.join(OUT, name); os.makedirs(d, exist_ok=True)
    try:
        m = timm.create_model(name, pretrained=False)
        size = m.pretrained_cfg.get("input_size", (3, 224, 224))
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.momentum = None
                if mod.affine:
                    with torch.no_grad():
                        mod.weight.uniform_(0.5, 1.5); mod.bias.normal_(0, 0.1)
        m.train()
        with torch.no_grad():
            for _ in range(3): m(torch.randn(4, *size))
        m.eval()
        x = torch.randn(1, *size)
        with torch.no_grad(): y = m(x)
        torch.onnx.export(m, (x,), os.path.join(d, "train.onnx"))
        dep = reparameterize_model(copy.deepcopy(m)).eval()
        with torch.no_grad(): yd = dep(x)
        torch.onnx.export(dep, (x,), os.path.join(d, "deploy.onnx"))
        np.save(os.path.join(d, "x.npy"), x.numpy()); np.save(os.path.join(d, "y.npy"), y.numpy())
        def convs(p): return sum(1 for n in onnx.load(p).graph.node if n.op_type == "Conv")
        info = {"deploy_conv": convs(os.path.join(d, "deploy.onnx")), "train_conv": convs(os.path.join(d, "train.onnx")),
                "torch_fuse_err": float((yd - y).abs().max() / y.abs().max())}
        json.dump(info, open(os.path.join(d, "info.json"), "w"))
        print(name, info, flush=True)
    except Exception as e:
        print(name, "FAILED", type(e).__name__, str(e)[:300], flush=True)

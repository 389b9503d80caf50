"""Exports timm models as a real-model corpus in the fixtures' layout, for
REPFUSE_MODELS: <out>/<model>/train.onnx (training form, BN statistics calibrated on
random batches), io.safetensors (input, output_train, output_deploy from timm's own
reparameterize_model), deploy.onnx and expected.json (kind timm, data-path key counts
of both exports, PyTorch's own fusion error).

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch timm onnx onnxscript
    REPFUSE_CORPUS_OUT=/tmp/corpus2 /tmp/torchenv/bin/python scripts/export_timm_corpus.py \
        ghostnetv3_050 tiny_vit_5m_224 shvit_s1 iformer_t lcnetv2_small efficientvim_m1 ...
    REPFUSE_MODELS=/tmp/corpus2 ./scripts/test.sh --test corpus
"""
import copy, json, os, sys, struct, collections
import numpy as np, torch, timm, onnx
from timm.utils.model import reparameterize_model
torch.manual_seed(0)
OUT = os.environ.get("REPFUSE_CORPUS_OUT", "/tmp/corpus2")

def key_counts(path):
    m = onnx.load(path); g = m.graph
    data = {i.name for i in g.input}; c = collections.Counter()
    for n in g.node:
        fi = sum(1 for i in n.input if i in data)
        if fi: data.update(n.output)
        t = n.op_type
        if t in ("Conv", "BatchNormalization"): c[t] += 1
        elif t == "Concat" and fi: c["Concat"] += 1
        elif t in ("Add", "Sum") and fi >= 2: c["Add(branch)"] += 1
        elif t == "Sub" and fi >= 2: c["Sub(branch)"] += 1
    c["nodes"] = len(g.node)
    return dict(c)

def save_st(path, tensors):
    head, off, blobs = {}, 0, []
    for k, v in tensors.items():
        b = v.astype(np.float32).tobytes(); head[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}; off += len(b); blobs.append(b)
    h = json.dumps(head).encode(); h += b" " * ((8 - len(h) % 8) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))

# REPFUSE_EXPORTER picks how the model is exported (benches/results/real-models.md,
# sessions 17 and 18):
#   torchscript (default)  TorchScript, opset 17, the BNs kept as trained;
#   dynamo                 a plain `torch.onnx.export(model.eval(), (x,), path)` on torch
#                          2.15: dynamo and its optimizer (BN already folded into convs);
#   dyn_dynbatch           dynamo with a dynamic batch (`dynamic_shapes`);
#   dyn_noopt              dynamo with `optimize=False` (nothing folded, constants as nodes);
#   ts_dynbatch            TorchScript with a dynamic batch (`dynamic_axes`);
#   ts_dynbatch_train      the same, with the BNs kept as trained;
#   ts_opset11             TorchScript at opset 11;
#   ts_init_as_inputs      TorchScript with `keep_initializers_as_inputs=True`;
#   ts_fp16                TorchScript of the model in float16 (a float16 input);
#   ts_bf16                the same in bfloat16;
#   dyn_fp16               torch's default (dynamo) exporter on the model in float16;
#   ts_extdata_per_tensor  TorchScript, then every weight in its own external file.
# The dynamic variants trace a batch of 2 (a batch of 1 would be specialised away).
EXPORTER = os.environ.get("REPFUSE_EXPORTER", "torchscript")

def export(model, x, path):
    ts = dict(dynamo=False, input_names=["input"], output_names=["output"])
    dyn_axes = {"dynamic_axes": {"input": {0: "batch"}, "output": {0: "batch"}}}
    x2 = torch.cat([x, x])
    if EXPORTER == "dynamo":
        torch.onnx.export(model, (x,), path)
    elif EXPORTER == "dyn_dynbatch":
        torch.onnx.export(model, (x2,), path, dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    elif EXPORTER == "dyn_noopt":
        torch.onnx.export(model, (x,), path, optimize=False)
    elif EXPORTER == "ts_dynbatch":
        torch.onnx.export(model, (x2,), path, **ts, **dyn_axes)
    elif EXPORTER == "ts_dynbatch_train":
        torch.onnx.export(model, (x2,), path, **ts, **dyn_axes, training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    elif EXPORTER == "ts_opset11":
        torch.onnx.export(model, (x,), path, **ts, opset_version=11)
    elif EXPORTER == "ts_init_as_inputs":
        torch.onnx.export(model, (x,), path, **ts, keep_initializers_as_inputs=True)
    elif EXPORTER == "ts_fp16":
        torch.onnx.export(copy.deepcopy(model).half(), (x.half(),), path, **ts)
    elif EXPORTER == "dyn_fp16":
        torch.onnx.export(copy.deepcopy(model).half(), (x.half(),), path)
    elif EXPORTER == "ts_bf16":
        torch.onnx.export(copy.deepcopy(model).bfloat16(), (x.bfloat16(),), path, **ts)
    elif EXPORTER == "ts_extdata_per_tensor":
        torch.onnx.export(model, (x,), path, **ts)
        onnx.save(onnx.load(path), path, save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    elif EXPORTER == "torchscript":
        torch.onnx.export(model, (x,), path, **ts, opset_version=17, training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    else:
        raise SystemExit(f"unknown REPFUSE_EXPORTER={EXPORTER}")

for name in sys.argv[1:]:
    d = os.path.join(OUT, name); os.makedirs(d, exist_ok=True)
    try:
        m = timm.create_model(name, pretrained=False)
        size = m.pretrained_cfg.get("input_size", (3, 224, 224))
        x = torch.randn(1, *size)
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
        with torch.no_grad(): y = m(x)
        export(m, x, os.path.join(d, "train.onnx"))
        dep = reparameterize_model(copy.deepcopy(m)).eval()
        with torch.no_grad(): yd = dep(x)
        export(dep, x, os.path.join(d, "deploy.onnx"))
        save_st(os.path.join(d, "io.safetensors"), {"input": x.numpy(), "output_train": y.numpy(), "output_deploy": yd.numpy()})
        exp = {"case": name, "kind": "timm", "key_train": key_counts(os.path.join(d, "train.onnx")), "key_deploy": key_counts(os.path.join(d, "deploy.onnx")), "max_abs_diff_torch": float((y - yd).abs().max())}
        json.dump(exp, open(os.path.join(d, "expected.json"), "w"), indent=1)
        print(name, "ok", exp["key_deploy"], exp["max_abs_diff_torch"], flush=True)
    except Exception as e:
        print(name, "FAILED", repr(e)[:300], flush=True)

"""Runs an ONNX model in ONNX Runtime on a fixture's recorded `input` and prints, as
JSON, its largest difference from PyTorch's `output_train` (and PyTorch's own
re-parameterization error, output_deploy vs output_train). Given the original model
too, also how far its output moves when the input moves by one or two units in the
last place (`sensitivity`, the larger of two random draws): how much the network
amplifies a rounding, which bounds what a correct fusion may change (see
`SENSITIVITY_SIGMAS` in src/verify/mod.rs). Used by tests/corpus.rs.
Checks the model with onnx's full checker first. Reads io.safetensors by hand (the
format is an 8-byte header length, a JSON header, raw little-endian data) so the
test venv needs no safetensors package."""
import json
import struct
import sys

import numpy as np
import onnx
import onnxruntime as ort

DT = {"F32": np.float32, "F16": np.float16}


def load_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    head = json.loads(raw[8 : 8 + n])
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=DT[v["dtype"]]).reshape(v["shape"])
    return out


def main():
    model, io_path = sys.argv[1], sys.argv[2]
    onnx.checker.check_model(onnx.load(model), full_check=True)
    io = load_safetensors(io_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    y = s.run(None, {s.get_inputs()[0].name: io["input"]})[0].astype(np.float64)
    ref = io["output_train"].astype(np.float64)
    out = {
        "shape_equal": list(y.shape) == list(ref.shape),
        "max_abs": float(np.abs(y - ref).max()),
        "ref_abs_max": float(np.abs(ref).max()),
        "torch_deploy_max_abs": float(np.abs(io["output_deploy"].astype(np.float64) - ref).max()),
    }
    if len(sys.argv) > 3:
        o = ort.InferenceSession(sys.argv[3], opts, providers=["CPUExecutionProvider"])
        x = io["input"]
        feed = o.get_inputs()[0].name
        base = o.run(None, {feed: x})[0].astype(np.float64)
        unit = 2.0**-11 if x.dtype == np.float16 else 2.0**-24
        rng = np.random.default_rng(7)
        moved = 0.0
        for _ in range(2):
            nudged = (x.astype(np.float64) * (1 + 2 * unit * rng.choice([-1.0, 1.0], x.shape))).astype(x.dtype)
            moved = max(moved, float(np.abs(o.run(None, {feed: nudged})[0].astype(np.float64) - base).max()))
        out["sensitivity"] = moved
    print(json.dumps(out))


if __name__ == "__main__":
    main()

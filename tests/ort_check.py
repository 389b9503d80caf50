"""Runs two ONNX models in ONNX Runtime on the same seeded random inputs and prints
their largest output difference as JSON. Used by tests/onnx_runtime.rs: ONNX Runtime
is the independent judge of what repfuse writes."""
import json
import sys

import numpy as np
import onnxruntime as ort

DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def run(path, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    # No graph optimisation: compare the models as written, not as ORT rewrites them.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    # Each model gets the inputs in its own element type (a float16 original and the
    # float32 model `fuse --f32` wrote of it take the same values).
    feeds = {i.name: feeds[i.name].astype(DTYPES[i.type]) if i.name in feeds else None for i in s.get_inputs()}
    return s, s.run(None, {k: v for k, v in feeds.items() if v is not None})


def main():
    a, b, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # What repfuse wrote must pass onnx's own checker (full check, with shapes).
    import onnx

    onnx.checker.check_model(onnx.load(b), full_check=True)
    probe = ort.InferenceSession(a, providers=["CPUExecutionProvider"])

    # A symbolic batch (axis 0) runs as 2: a size repfuse fixed to 1 while it
    # analysed the model must not have been written into it. Other symbolic sizes
    # run as 1, and so does the batch when the original itself only runs with 1.
    def feeds_for(batch):
        rng = np.random.default_rng(seed)
        feeds = {}
        for i in probe.get_inputs():
            shape = [d if isinstance(d, int) else (batch if k == 0 else 1) for k, d in enumerate(i.shape)]
            feeds[i.name] = rng.uniform(-1, 1, shape).astype(DTYPES[i.type])
        return feeds

    try:
        feeds = feeds_for(2)
        _, out_a = run(a, feeds)
    except Exception:
        feeds = feeds_for(1)
        _, out_a = run(a, feeds)
    sb, out_b = run(b, feeds)
    names_b = [o.name for o in sb.get_outputs()]
    res = {"outputs": [], "same_outputs": names_b == [o.name for o in probe.get_outputs()], "input_shapes": [list(v.shape) for v in feeds.values()]}
    for x, y in zip(out_a, out_b):
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        diff = np.abs(x64 - y64)
        res["outputs"].append({
            "shape_equal": list(x.shape) == list(y.shape),
            "max_abs": float(diff.max()) if diff.size else 0.0,
            "ref_abs_max": float(np.abs(x64).max()) if x.size else 0.0,
            # Same policy as Tolerance::for_graph in src/verify.rs: sigmas * unit
            # roundoff * max|reference|, the unit of the output's float type.
            "allclose": bool(np.all(diff <= BOUND * UNIT_RATIO[x.dtype.name] * float(np.abs(x64).max(initial=0.0)) + 1e-30)),
        })
    print(json.dumps(res))


# The allowed error relative to max|reference| for float32 outputs (argv[4], from
# Tolerance::for_graph); other output types scale it by their unit roundoff.
BOUND = 1e-6
UNIT_RATIO = {"float32": 1.0, "float16": 2.0**13, "float64": 2.0**-29}

if __name__ == "__main__":
    if len(sys.argv) > 4:
        BOUND = float(sys.argv[4])
    main()

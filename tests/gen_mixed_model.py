"""Writes a random ONNX model that mixes fusable blocks with nodes repfuse does not
model, reading the same initializers and intermediate tensors, the way real exports
do: usage `gen_mixed_model.py SEED OUT.onnx`. Used by tests/written_models.rs.

Each block is a RepVGG-style block (3x3 conv+BN, 1x1 conv+BN, BN identity branch,
Add, Relu); around the blocks the generator sprinkles, at random:
- Identity aliases of an initializer another block's conv reads (PyTorch stores
  equal tensors once and makes the others with Identity), read by a conv or a Mul;
- a Mul by a per-channel layer scale and an Erf (GELU pieces) reading a BN's output
  that also feeds a branch sum;
- a Gather from a float table with int64 indices, its result added to the output
  through Unsqueeze/ReduceMean;
- extra graph outputs that expose intermediates.
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def main():
    seed, out = int(sys.argv[1]), sys.argv[2]
    rng = np.random.default_rng(seed)
    c, hw = int(rng.integers(2, 6)) * 2, int(rng.integers(5, 9))
    nodes, inits, outputs = [], [], []
    k = [0]

    def name(p):
        k[0] += 1
        return f"{p}{k[0]}"

    def init(p, arr):
        n = name(p)
        inits.append(numpy_helper.from_array(arr.astype(np.float32) if arr.dtype.kind == "f" else arr, n))
        return n

    def conv(x, ks, w=None):
        w = w or init("w", rng.normal(0, 0.3, (c, c, ks, ks)))
        y = name("conv")
        p = ks // 2
        nodes.append(helper.make_node("Conv", [x, w], [y], name=y, kernel_shape=[ks, ks], pads=[p] * 4))
        return y, w

    def bn(x):
        y = name("bn")
        args = [init("g", rng.uniform(0.5, 1.5, c)), init("b", rng.normal(0, 0.2, c)), init("m", rng.normal(0, 0.2, c)), init("v", rng.uniform(0.2, 2.0, c))]
        nodes.append(helper.make_node("BatchNormalization", [x] + args, [y], name=y, epsilon=1e-5))
        return y

    def op(t, ins, **kw):
        y = name(t.lower())
        nodes.append(helper.make_node(t, ins, [y], name=y, **kw))
        return y

    x = "input"
    shared_w = None
    shared_ls = None
    for _ in range(int(rng.integers(2, 5))):
        a, w3 = conv(x, 3)
        if shared_w is not None and rng.random() < 0.5:
            # A conv reading another block's weight through an Identity alias.
            alias = op("Identity", [shared_w])
            a, _ = conv(x, 3, alias)
        shared_w = w3
        a = bn(a)
        b = bn(conv(x, 1)[0])
        branches = [a, b, bn(x)]
        if rng.random() < 0.5:
            # A branch output also read by GELU pieces and a layer scale.
            e = op("Erf", [op("Mul", [a, init("s", np.full((1,), 0.70710678))])])
            if shared_ls is None:
                shared_ls = init("ls", rng.normal(1, 0.1, (1, c, 1, 1)))
                ls = shared_ls
            else:
                # The layer scale of an earlier block, through an Identity alias.
                ls = op("Identity", [shared_ls])
            branches.append(op("Mul", [e, ls]))
        s = branches[0]
        for t in branches[1:]:
            s = op("Add", [s, t])
        x = op("Relu", [s])
        if rng.random() < 0.3:
            outputs.append(x)
    if rng.random() < 0.5:
        # Gather from a float table (per-head biases in LeViT) added to the output.
        table = init("table", rng.normal(0, 1, (7, c)))
        idx = name("idx")
        inits.append(numpy_helper.from_array(rng.integers(0, 7, (1,)).astype(np.int64), idx))
        g = op("Gather", [table, idx], axis=0)
        g = op("Unsqueeze", [g, init("ax", np.array([2, 3], dtype=np.int64))])
        x = op("Add", [x, g])
    pooled = rng.random() < 0.3
    y = op("ReduceMean", [x], keepdims=1, axes=[2, 3]) if pooled else x
    outputs.append(y)
    shape = lambda o: [1, c, 1, 1] if pooled and o == y else [1, c, hw, hw]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape(o)) for o in dict.fromkeys(outputs)]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c, hw, hw])], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, out)


if __name__ == "__main__":
    main()

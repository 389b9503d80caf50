"""Writes the exporter-form models in this folder: small ONNX graphs in the shapes
PyTorch's exporter gives real timm blocks (layer scales as Mul, absent branches as
`+ 0`, RepMixer's `x + gamma * (mixer(x) - norm(x))`, averaged heads, LeViT's
token-wise Linear + BN1d with reshape_as). Each `<name>.onnx` has a `<name>.json` with
the most of each op the deploy form may keep. Run with a Python that has onnx and
numpy: `python tests/data/forms/make.py` (the files are committed; tests read them)."""
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(2026)


class G:
    def __init__(self, shape):
        self.nodes, self.inits, self.k = [], [], 0
        self.shape = shape

    def name(self, p):
        self.k += 1
        return f"{p}{self.k}"

    def init(self, p, arr, dtype=np.float32):
        n = self.name(p)
        self.inits.append(numpy_helper.from_array(np.asarray(arr).astype(dtype), n))
        return n

    def op(self, t, ins, **kw):
        y = self.name(t.lower())
        self.nodes.append(helper.make_node(t, ins, [y], name=y, **kw))
        return y

    def conv(self, x, cin, cout, k, groups=1):
        w = self.init("w", rng.normal(0, 0.3, (cout, cin // groups, k, k)))
        return self.op("Conv", [x, w], kernel_shape=[k, k], pads=[k // 2] * 4, group=groups)

    def bn(self, x, c):
        args = [self.init("g", rng.uniform(0.5, 1.5, c)), self.init("b", rng.normal(0, 0.2, c)), self.init("m", rng.normal(0, 0.2, c)), self.init("v", rng.uniform(0.2, 2.0, c))]
        return self.op("BatchNormalization", [x] + args, epsilon=1e-5)

    def save(self, name, out, out_shape, limits):
        graph = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, self.shape)], [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        onnx.save(m, os.path.join(HERE, name + ".onnx"))
        json.dump(limits, open(os.path.join(HERE, name + ".json"), "w"), indent=1)


def save_beside(g, name, out, out_shape, elem=TensorProto.FLOAT16, opset=17, ir=8, check=True):
    """Saves a test model that is not a form beside this folder (tests/data), its
    input and output of element type `elem`."""
    graph = helper.make_graph(g.nodes, name, [helper.make_tensor_value_info("input", elem, g.shape)], [helper.make_tensor_value_info(out, elem, out_shape)], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    if check:
        onnx.checker.check_model(model, full_check=True)
    onnx.save(model, os.path.join(HERE, "..", name + ".onnx"))


C, H = 8, 9

# MobileOne: an absent branch is the Python int 0, exported as `+ 0`.
g = G([1, C, H, H])
a = g.bn(g.conv("input", C, C, 3), C)
b = g.bn(g.conv("input", C, C, 1), C)
idn = g.op("Add", [g.bn("input", C), g.init("zero", np.array(0.0))])
y = g.op("Relu", [g.op("Add", [g.op("Add", [a, b]), idn])])
g.save("add_zero_branch", y, [1, C, H, H], {"Conv": 1, "BatchNormalization": 0, "Add": 0})

# A layer scale (per-channel Mul) and a division by a constant after conv+BN.
g = G([1, C, H, H])
y = g.bn(g.conv("input", C, C, 3), C)
y = g.op("Mul", [y, g.init("gamma", rng.normal(1, 0.2, (C, 1, 1)))])
y = g.op("Div", [y, g.init("d", rng.uniform(1, 3, (1, C, 1, 1)))])
y = g.op("Sub", [g.init("c", rng.normal(0, 1, (C, 1, 1))), y])
g.save("scale_div_const_minus", y, [1, C, H, H], {"Conv": 1, "BatchNormalization": 0, "Mul": 0, "Div": 0, "Sub": 0})

# FastViT's RepMixer: x + gamma * (mixer(x) - norm(x)), mixer a dw conv + BN.
g = G([1, C, H, H])
mixer = g.bn(g.conv("input", C, C, 3, groups=C), C)
norm = g.bn("input", C)
d = g.op("Sub", [mixer, norm])
y = g.op("Add", ["input", g.op("Mul", [g.init("ls", rng.normal(0.5, 0.1, (C, 1, 1))), d])])
g.save("repmixer", y, [1, C, H, H], {"Conv": 1, "BatchNormalization": 0, "Sub": 0, "Mul": 0, "Add": 0, "Neg": 0})

# Two heads on one feature, averaged: (head(x) + head_dist(x)) / 2.
g = G([1, C, H, H])
f = g.op("Flatten", [g.op("GlobalAveragePool", ["input"])], axis=1)
h1 = g.op("Gemm", [f, g.init("w", rng.normal(0, 0.3, (5, C))), g.init("b", rng.normal(0, 0.1, 5))], transB=1)
h2 = g.op("Gemm", [f, g.init("w", rng.normal(0, 0.3, (5, C))), g.init("b", rng.normal(0, 0.1, 5))], transB=1)
y = g.op("Div", [g.op("Add", [h1, h2]), g.init("two", np.array(2.0))])
g.save("averaged_heads", y, [1, 5], {"Gemm": 1, "Add": 0, "Div": 0})

# LeViT's LinearNorm on tokens: bn(linear(x).flatten(0, 1)).reshape_as(linear(x)).
# Deploy form: one MatMul (+ Add) on the tokens, as PyTorch's own; no Flatten, Gemm
# or Reshape around it.
N, I, O = 6, 8, 12
g = G([1, N, I])
mm = g.op("MatMul", ["input", g.op("Transpose", [g.init("w", rng.normal(0, 0.3, (O, I)))], perm=[1, 0])])
bn = g.bn(g.op("Flatten", [mm], axis=2), O)
y = g.op("Reshape", [bn, g.op("Shape", [mm])])
y = g.op("Erf", [y])
g.save("token_linear_bn", y, [1, N, O], {"BatchNormalization": 0, "Shape": 0, "MatMul": 1, "Gemm": 0, "Flatten": 0, "Reshape": 0})

# A layer scale after GELU-as-Erf has nothing to fold into: it stays a Mul, and a
# broadcast Add of a computed [1, C, 1, 1] tensor stays an Add.
g = G([1, C, H, H])
e = g.op("Erf", [g.conv("input", C, C, 3)])
y = g.op("Mul", [e, g.init("ls", rng.normal(1, 0.1, (1, C, 1, 1)))])
pooled = g.op("ReduceMean", [y], axes=[2, 3], keepdims=1)
y = g.op("Add", [y, pooled])
g.save("unfusable_scale_and_broadcast", y, [1, C, H, H], {"Conv": 1, "Mul": 1, "Add": 1, "BatchNormalization": 0})

# c - conv(x): tract's declutter pass folds this Sub into the conv with the wrong
# sign; the verifier must not trust that pass (see src/verify/tract_engine.rs).
g = G([1, C, H, H])
y = g.op("Sub", [g.init("c", rng.normal(0, 1, (C, 1, 1))), g.conv("input", C, C, 3)])
g.save("const_minus_conv", y, [1, C, H, H], {"Conv": 1, "Sub": 0})

# torch's dynamo exporter without its optimizer (`optimize=False`) gives a bias-free
# conv the bias Expand(CastLike(0.0, input), Expand(Shape(weight)[0:1], [1])), with
# Constant nodes in their `value_ints` form. A RepVGG block written that way must fuse
# as if the conv had no bias input.
def dynamo_conv(g, x, cin, cout, k):
    w = g.init("w", rng.normal(0, 0.3, (cout, cin, k, k)))
    s = g.op("Shape", [w], start=0, end=1)
    one = g.name("one")
    g.nodes.append(helper.make_node("Constant", [], [one], name=one, value_ints=[1]))
    s = g.op("Expand", [s, one])
    zero = g.name("zero")
    g.nodes.append(helper.make_node("Constant", [], [zero], name=zero, value=numpy_helper.from_array(np.array(0.0, np.float32))))
    b = g.op("Expand", [g.op("CastLike", [zero, "input"]), s])
    return g.op("Conv", [x, w, b], kernel_shape=[k, k], pads=[k // 2] * 4)


g = G([1, C, H, H])
a = g.bn(dynamo_conv(g, "input", C, C, 3), C)
b = g.bn(dynamo_conv(g, "input", C, C, 1), C)
y = g.op("Relu", [g.op("Add", [g.op("Add", [a, b]), g.bn("input", C)])])
g.save("dynamo_unoptimized_zero_bias", y, [1, C, H, H], {"Conv": 1, "BatchNormalization": 0, "Add": 0, "Shape": 0, "Expand": 0, "CastLike": 0, "Constant": 0})

# A dynamic batch as torch's dynamo exporter writes it (opset 18): the input's batch
# is the symbol `batch`, every intermediate shape is declared in value_info with that
# symbol, a squeeze-excite's ReduceMean takes its axes as an input, and its gate is
# resized to the feature map by sizes computed with Shape (GhostNetV3's DFC
# attention). The RepVGG block after the gate fuses only if the shapes past the
# carried Resize are known for the fixed batch of 1.
def repvgg(g, x, c):
    a = g.bn(g.conv(x, c, c, 3), c)
    b = g.bn(g.conv(x, c, c, 1), c)
    return g.op("Add", [g.op("Add", [a, b]), g.bn(x, c)])


g = G(["batch", C, H, H])
r = g.op("Relu", [repvgg(g, "input", C)])
m = g.op("ReduceMean", [r, g.init("axes", [2, 3], np.int64)], keepdims=1)
gate = g.op("Sigmoid", [g.conv(m, C, C, 1)])
sizes = g.op("Concat", [g.op("Shape", [gate], start=0, end=2), g.init("hw", [H, H], np.int64)], axis=0)
up = g.op("Resize", [gate, "", "", sizes], mode="nearest")
y = repvgg(g, g.op("Mul", [r, up]), C)
graph = helper.make_graph(g.nodes, "dynamic_batch_se_resize", [helper.make_tensor_value_info("input", TensorProto.FLOAT, g.shape)], [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["batch", C, H, H])], g.inits)
model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
model.ir_version = 8
assert any(d.dim_param == "batch" for v in model.graph.value_info for d in v.type.tensor_type.shape.dim), "value_info carries the batch symbol"
onnx.checker.check_model(model, full_check=True)
onnx.save(model, os.path.join(HERE, "dynamic_batch_se_resize.onnx"))
json.dump({"Conv": 3, "BatchNormalization": 0, "Add": 0}, open(os.path.join(HERE, "dynamic_batch_se_resize.json"), "w"), indent=1)

# LeViT's LinearNorm exported by TorchScript with a dynamic batch: `reshape_as` reads
# the matmul's shape at run time (Shape(MatMul)), which no constant replaces. The
# deploy form is still one MatMul (+ Add) on the tokens, and nothing computes shapes.
N, I, O = 6, 8, 12
g = G(["batch", N, I])
mm = g.op("MatMul", ["input", g.op("Transpose", [g.init("w", rng.normal(0, 0.3, (O, I)))], perm=[1, 0])])
bn = g.bn(g.op("Flatten", [mm], axis=2), O)
y = g.op("Reshape", [bn, g.op("Shape", [mm])])
y = g.op("Erf", [y])
graph = helper.make_graph(g.nodes, "token_linear_bn_dynamic_batch", [helper.make_tensor_value_info("input", TensorProto.FLOAT, g.shape)], [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["batch", N, O])], g.inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model, full_check=True)
onnx.save(model, os.path.join(HERE, "token_linear_bn_dynamic_batch.onnx"))
json.dump({"BatchNormalization": 0, "Shape": 0, "Concat": 0, "MatMul": 1, "Gemm": 0, "Flatten": 0, "Reshape": 0}, open(os.path.join(HERE, "token_linear_bn_dynamic_batch.json"), "w"), indent=1)

# The same with the normalised tokens also read flat (a second output): the chain
# stays Flatten -> Gemm -> Reshape, and the Reshape's run-time shape is computed from
# the matmul's input, since the matmul itself is gone.
g = G(["batch", N, I])
mm = g.op("MatMul", ["input", g.op("Transpose", [g.init("w", rng.normal(0, 0.3, (O, I)))], perm=[1, 0])])
bn = g.bn(g.op("Flatten", [mm], axis=2), O)
y = g.op("Erf", [g.op("Reshape", [bn, g.op("Shape", [mm])])])
z = g.op("Relu", [bn])
outs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["batch", N, O]), helper.make_tensor_value_info(z, TensorProto.FLOAT, ["rows", O])]
graph = helper.make_graph(g.nodes, "token_linear_bn_dynamic_batch_shared", [helper.make_tensor_value_info("input", TensorProto.FLOAT, g.shape)], outs, g.inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model, full_check=True)
onnx.save(model, os.path.join(HERE, "token_linear_bn_dynamic_batch_shared.onnx"))
json.dump({"BatchNormalization": 0, "MatMul": 0, "Gemm": 1, "Shape": 1, "Concat": 1}, open(os.path.join(HERE, "token_linear_bn_dynamic_batch_shared.json"), "w"), indent=1)

# LeViT's LinearNorm as torch's dynamo exporter writes it: the flatten is a Reshape
# to constant rows (`[-1, O]` with a dynamic batch, `[N, O]` without) and the
# weight is a plain `[I, O]` initializer. Deploy form: one MatMul (+ Add), as PyTorch's.
for name, batch, rows in [("token_linear_bn_dynamo_dynamic_batch", "batch", -1), ("token_linear_bn_dynamo", 1, N)]:
    g = G([batch, N, I])
    mm = g.op("MatMul", ["input", g.init("w", rng.normal(0, 0.3, (I, O)))])
    bn = g.bn(g.op("Reshape", [mm, g.init("rows", [rows, O], np.int64)], allowzero=1), O)
    y = g.op("Erf", [g.op("Reshape", [bn, g.init("back", [-1, N, O], np.int64)])])
    graph = helper.make_graph(g.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, g.shape)], [helper.make_tensor_value_info(y, TensorProto.FLOAT, [batch, N, O])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, os.path.join(HERE, name + ".onnx"))
    json.dump({"BatchNormalization": 0, "Gemm": 0, "MatMul": 1, "Reshape": 0}, open(os.path.join(HERE, name + ".json"), "w"), indent=1)

# `keep_initializers_as_inputs=True` (and old IR versions) list every initializer as a
# graph input too. An attention-bias table read only through a constant Gather (LeViT)
# is folded at read time and dropped; its input declaration must go with it, or ONNX
# Runtime asks the caller for a value.
g = G([1, C, H, H])
table = g.init("table", rng.normal(0, 1, (C, 3)))
bias = g.op("Reshape", [g.op("Gather", [table, g.init("idx", rng.integers(0, 3, H * H), np.int64)], axis=1), g.init("shape", [1, C, H, H], np.int64)])
y = g.op("Add", [g.bn(g.conv("input", C, C, 3), C), bias])
inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, g.shape)] + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.inits]
graph = helper.make_graph(g.nodes, "initializers_as_inputs", inputs, [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, C, H, H])], g.inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model, full_check=True)
onnx.save(model, os.path.join(HERE, "initializers_as_inputs.onnx"))
json.dump({"BatchNormalization": 0, "Gather": 0, "Conv": 1}, open(os.path.join(HERE, "initializers_as_inputs.json"), "w"), indent=1)

# Not a form (written beside this folder, so the form test does not fuse it without
# verification): a float16 model with FastViT's layer scale of 1e-5 after a conv.
# Folding the scale into the conv makes weights of ~3e-6, under float16's smallest
# normal (6.1e-5), where they keep only a few bits; `fuse --verify` must refuse that
# fold and still fold the conv+BN before it (tests/cli.rs).
# A float32 Constant (an exporter's eps), named to sort first, is cast to float16 and
# added: the fused convs must still be written in float16.
g = G([1, C, H, H])
y = g.op("Relu", [g.bn(g.conv("input", C, C, 3), C)])
g.nodes.append(helper.make_node("Constant", [], ["/eps"], name="/eps", value=numpy_helper.from_array(np.array(1e-3, np.float32))))
y = g.op("Add", [y, g.op("Cast", ["/eps"], to=TensorProto.FLOAT16)])
y = g.op("Mul", [g.conv(y, C, C, 3), g.init("ls", np.full((C, 1, 1), 1e-5))])
for t in g.inits:
    if t.data_type == TensorProto.FLOAT:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
save_beside(g, "fp16_layer_scale", y, [1, C, H, H])

# MobileOne-S4's 1x1 block without identity or scale branch, under a squeeze-excite:
# the branch sum is `bn(conv(x)) + 0 + 0` and the SE reads it twice, through a carried
# ReduceMean and through the gating Mul. The reader drops the `+ 0`s, so both readers
# read the BN's output (then the fused conv's); the carried node must be written
# reading that name too, not the dropped Add's (an invalid file, which the writer's
# last check refused: MobileOne-S4 could not be written).
g = G([1, C, H, H])
s = g.op("Add", [g.op("Add", [g.bn(g.conv("input", C, C, 1), C), g.init("zero", np.array(0.0))]), g.init("zero", np.array(0.0))])
m = g.op("ReduceMean", [s], axes=[2, 3], keepdims=1)
se = g.op("Conv", [m, g.init("w", rng.normal(0, 0.3, (C // 2, C, 1, 1))), g.init("b", rng.normal(0, 0.2, C // 2))], kernel_shape=[1, 1])
se = g.op("Conv", [g.op("Relu", [se]), g.init("w", rng.normal(0, 0.3, (C, C // 2, 1, 1))), g.init("b", rng.normal(0, 0.2, C))], kernel_shape=[1, 1])
y = g.op("Relu", [g.op("Mul", [s, g.op("Sigmoid", [se])])])
g.save("add_zero_se", y, [1, C, H, H], {"Conv": 3, "BatchNormalization": 0, "Add": 0})

# Not a form (written beside this folder, as fp16_layer_scale): a float16 model as
# PyTorch's TorchScript exporter writes MobileOne-S4 and LCNetV2 under `.half()`: a
# RepVGG-style block, a squeeze-excite gate (ReduceMean, Mul: ops the reference does
# not run) and a Gemm head. tract cannot run float16 Gemm ("expected F16 got F32"), so
# `fuse --verify` had no end-to-end check of such a model; it now runs both models
# with float16 widened to float32 (tests/cli.rs).
g = G([1, C, H, H])
r = g.op("Relu", [g.op("Add", [g.op("Add", [g.bn(g.conv("input", C, C, 3), C), g.bn(g.conv("input", C, C, 1), C)]), g.bn("input", C)])])
m = g.op("ReduceMean", [r], axes=[2, 3], keepdims=1)
se = g.op("Conv", [m, g.init("w", rng.normal(0, 0.3, (C // 2, C, 1, 1))), g.init("b", rng.normal(0, 0.2, C // 2))], kernel_shape=[1, 1])
se = g.op("Conv", [g.op("Relu", [se]), g.init("w", rng.normal(0, 0.3, (C, C // 2, 1, 1))), g.init("b", rng.normal(0, 0.2, C))], kernel_shape=[1, 1])
y = g.op("Mul", [r, g.op("Sigmoid", [se])])
f = g.op("Flatten", [g.op("GlobalAveragePool", [y])], axis=1)
y = g.op("Gemm", [f, g.init("fc", rng.normal(0, 0.3, (10, C))), g.init("fcb", rng.normal(0, 0.2, 10))], transB=1)
for t in g.inits:
    if t.data_type == TensorProto.FLOAT:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
save_beside(g, "fp16_se_head", y, [1, 10])

# Not a form, and not valid ONNX (written beside this folder): a RepVGG-style block
# in bfloat16 at opset 20, as PyTorch exports a `.bfloat16()` model. ONNX allows
# bfloat16 Conv only from opset 22, so ONNX Runtime refuses this file, and repfuse
# must not write its deploy form the same way: `fuse` refuses with the reason and
# `fuse --f32` writes a float32 model that loads (tests/cli.rs).
def to_bf16(t):
    a = numpy_helper.to_array(t).astype(np.float32).view(np.uint32)
    bits = ((a + 0x7FFF + ((a >> 16) & 1)) >> 16).astype(np.uint16)
    out = TensorProto(name=t.name, data_type=TensorProto.BFLOAT16, dims=list(t.dims))
    out.raw_data = bits.tobytes()
    return out
g = G([1, C, H, H])
y = g.op("Relu", [g.op("Add", [g.op("Add", [g.bn(g.conv("input", C, C, 3), C), g.bn(g.conv("input", C, C, 1), C)]), g.bn("input", C)])])
g.inits = [to_bf16(t) for t in g.inits]
save_beside(g, "bf16_conv_opset20", y, [1, C, H, H], elem=TensorProto.BFLOAT16, opset=20, ir=9, check=False)

# Not a form (the forms are checked at float32 precision and by ONNX Runtime, which
# has no bfloat16 MatMul or Erf on the CPU): LeViT's LinearNorm of `token_linear_bn`
# in bfloat16, valid at opset 17. tract has no bfloat16 type, so its shape analysis
# of such a file failed and the reader could not lift `reshape_as`: the deploy form
# kept Flatten, Gemm, Shape, Concat and Reshape (bfloat16 LeViT-128S: 47 Shape and
# 47 Concat, every region unchecked). The analysis now also runs on the file widened
# to float32 (tests/cli.rs).
g = G([1, N, I])
mm = g.op("MatMul", ["input", g.op("Transpose", [g.init("w", rng.normal(0, 0.3, (O, I)))], perm=[1, 0])])
bn = g.bn(g.op("Flatten", [mm], axis=2), O)
y = g.op("Erf", [g.op("Reshape", [bn, g.op("Shape", [mm])])])
g.inits = [to_bf16(t) for t in g.inits]
save_beside(g, "bf16_token_linear_bn", y, [1, N, O], elem=TensorProto.BFLOAT16)

# Not a form (written beside this folder): a float16 model computing its gate in
# float32, as autocast exports do: Cast to float, Sigmoid, Cast back to float16.
# `fuse --f32` must write the carried Cast back to float32 too, or its float16 output
# meets the float32 weights in the Mul and ONNX Runtime refuses the file (tests/cli.rs).
g = G([1, C, H, H])
y = g.bn(g.conv("input", C, C, 3), C)
gate = g.op("Cast", [g.op("Sigmoid", [g.op("Cast", [y], to=TensorProto.FLOAT)])], to=TensorProto.FLOAT16)
y = g.op("Mul", [y, gate])
for t in g.inits:
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
save_beside(g, "fp16_cast_gate", y, [1, C, H, H])

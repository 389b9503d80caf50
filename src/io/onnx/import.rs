//! ONNX -> IR. Known ops whose parameters are initializers become IR ops; anything
//! else (or a known op in a form we do not model) becomes Opaque and is carried
//! through unchanged, attributes and all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use onnx_protobuf::{Message, ModelProto, NodeProto, TensorProto};

use super::attrs;
use super::tensor::{decode_with, dims, ExternalData, FloatType};
use super::OnnxModel;
use crate::error::{Error, Result};
use crate::graph::{Activation, AvgPool2d, BatchNorm, Conv2d, Graph, Linear, Node, Op, Opaque, ValueInfo};
use crate::tensor::Tensor;
use crate::weights::Weights;

fn is_external(t: &TensorProto) -> bool {
    t.data_location.enum_value() == Ok(onnx_protobuf::tensor_proto::DataLocation::EXTERNAL)
}

/// ONNX ops the reader maps to the IR in some form (see `State::known_op`).
const MODELLED: &[&str] = &[
    "Conv",
    "BatchNormalization",
    "Gemm",
    "MatMul",
    "Add",
    "Sum",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Concat",
    "AveragePool",
    "GlobalAveragePool",
    "Flatten",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Gelu",
    "HardSwish",
    "HardSigmoid",
    "Identity",
    "Constant",
];

/// Why node `n` is carried through unchanged, in words for `inspect`.
pub(super) fn carried_why(n: &NodeProto) -> String {
    if !(n.domain.is_empty() || n.domain == "ai.onnx") {
        format!("op of domain `{}`: not modelled, carried unchanged", n.domain)
    } else if MODELLED.contains(&n.op_type.as_str()) {
        "a form repfuse does not model (attributes, rank, or operands computed at run time): carried unchanged".into()
    } else {
        "op not modelled by repfuse: carried unchanged".into()
    }
}

/// A float initializer's type, shape and values.
type Decoded = (FloatType, Vec<usize>, Vec<f32>);

/// Reads an ONNX file (and its external data) into the IR.
pub fn read_onnx(path: &Path) -> Result<OnnxModel> {
    read_onnx_bytes(path, &crate::io::FileBytes::open(path)?)
}

/// Same as `read_onnx` with the bytes already in memory (`path` locates external
/// data and names the file in errors).
pub fn read_onnx_bytes(path: &Path, bytes: &[u8]) -> Result<OnnxModel> {
    let file_err = |why: String| Error::File { path: path.to_path_buf(), why };
    // The weights stay in `bytes` (a mapped file): protobuf parses the rest.
    let stripped = super::wire::strip_initializer_data(bytes).map_err(|e| file_err(format!("not a valid ONNX model (protobuf: {})", e)))?;
    let proto = ModelProto::parse_from_bytes(&stripped.bytes).map_err(|e| file_err(format!("not a valid ONNX model (protobuf: {})", e)))?;
    let g = proto.graph.as_ref().ok_or_else(|| file_err("the model has no graph".into()))?;
    // protobuf parsing accepts a file cut inside a nested message; a model always
    // declares its opset (written last by exporters) and has nodes and outputs, so
    // their absence means a truncated or foreign file.
    let opset = proto.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version);
    match opset {
        Some(v) if (1..=64).contains(&v) => {}
        Some(v) => return Err(file_err(format!("declares default-domain opset {} (truncated or corrupt?)", v))),
        None => return Err(file_err("declares no default-domain opset_import (truncated, or not an ONNX model)".into())),
    }
    if g.node.is_empty() || g.output.is_empty() {
        return Err(file_err(format!("the graph has {} nodes and {} outputs (truncated or empty model)", g.node.len(), g.output.len())));
    }
    let mut ext = ExternalData::new(path);
    let mut st = State::default();
    let in_file = |e: Error| -> Error {
        match e {
            Error::File { .. } | Error::Io { .. } => e,
            other => file_err(other.to_string()),
        }
    };
    let raws: Vec<Option<&[u8]>> = (0..g.initializer.len()).map(|i| stripped.raw.get(i).cloned().flatten().map(|r| &bytes[r])).collect();
    // Float weights in the file decode on every core: the copies and the page faults
    // of their new memory are most of reading a model.
    let decoded: Vec<Option<Result<Decoded>>> = {
        use rayon::prelude::*;
        g.initializer
            .par_iter()
            .zip(&raws)
            .map(|(t, raw)| {
                (raw.is_some() && !is_external(t) && FloatType::from_onnx(t.data_type).is_some()).then(|| decode_with(t, *raw, &mut ExternalData::new(path)))
            })
            .collect()
    };
    for ((t, raw), d) in g.initializer.iter().zip(raws).zip(decoded) {
        st.add_initializer(t, raw, d.transpose().map_err(&in_file)?, &mut ext).map_err(&in_file)?;
    }
    let mut dynamic_dims = vec![];
    for vi in &g.input {
        if st.graph.params.contains_key(&vi.name) {
            continue;
        }
        let shape = input_shape(vi, &mut dynamic_dims).map_err(&in_file)?;
        if shape.len() == 2 {
            st.rank2.insert(vi.name.clone());
        }
        st.graph.inputs.push(ValueInfo { name: vi.name.clone(), shape });
    }
    st.graph.outputs = g.output.iter().map(|o| o.name.clone()).collect();
    let mut consumers: HashMap<&str, usize> = HashMap::new();
    for n in &g.node {
        for i in &n.input {
            *consumers.entry(i.as_str()).or_default() += 1;
        }
    }
    let mut skip: HashSet<usize> = HashSet::new();
    for (k, n) in g.node.iter().enumerate() {
        if skip.contains(&k) {
            continue;
        }
        if n.op_type == "Constant" && n.domain.is_empty() {
            if let Some(t) = attrs::get(n, "value").and_then(|a| a.t.as_ref()) {
                let mut t = t.clone();
                t.name = n.output.first().cloned().unwrap_or_default();
                st.add_initializer(&t, None, None, &mut ext).map_err(&in_file)?;
                continue;
            }
        }
        // Read through Identity aliases before looking at the node: PyTorch stores equal
        // initializers once and makes the others with Identity, so a Conv's bias or a
        // Gather's table may be an alias. Every reader (known or carried) then names
        // the real tensor, and no alias is left dangling when the Identity is dropped.
        let resolved;
        let n = if n.input.iter().any(|i| st.alias.contains_key(i)) {
            let mut r = n.clone();
            for i in &mut r.input {
                *i = st.resolve(i);
            }
            resolved = r;
            &resolved
        } else {
            n
        };
        // MatMul(x, W) + Add(b) is a Linear with bias when nothing else reads the product.
        let fused_add = (n.op_type == "MatMul").then(|| matmul_bias(g.node.as_slice(), k, &consumers, &st)).flatten();
        let used_add = st.import_node(n, k, fused_add.as_ref().map(|(j, b)| (&g.node[*j], b.clone()))).map_err(&in_file)?;
        if let (true, Some((j, _))) = (used_add, fused_add) {
            skip.insert(j);
        }
    }
    // Constant arithmetic first: where it was all that was carried (`x + 0` in
    // MobileOne), the engine's analysis below (which parses the whole file again) is
    // not needed. Again after it, for the constants it proves (`sigmoid(alpha)`).
    super::arith::lift_constant_arith(&mut st.graph, &mut st.weights, &mut st.dtypes).map_err(&in_file)?;
    super::static_shapes::fold_static_shapes(bytes, path, &mut st.graph, &mut st.weights, &mut st.dtypes, &mut st.passthrough, dynamic_dims.is_empty());
    super::matmul::lift_token_linears(&mut st.graph, &mut st.weights, &mut st.dtypes);
    super::arith::lift_constant_arith(&mut st.graph, &mut st.weights, &mut st.dtypes).map_err(&in_file)?;
    let float_type = st.dtypes.values().next().copied().unwrap_or(FloatType::F32);
    tracing::info!(path = %path.display(), nodes = st.graph.nodes.len(), weights = st.weights.len(), opset = ?opset, "read ONNX");
    Ok(OnnxModel {
        path: path.to_path_buf(),
        graph: st.graph,
        weights: st.weights,
        float_type,
        proto,
        passthrough: st.passthrough,
        dtypes: st.dtypes,
        dynamic_dims,
    })
}

fn input_shape(vi: &onnx_protobuf::ValueInfoProto, dynamic: &mut Vec<String>) -> Result<Vec<usize>> {
    use onnx_protobuf::type_proto::Value;
    let tt = match vi.type_.as_ref().and_then(|t| t.value.as_ref()) {
        Some(Value::TensorType(tt)) => tt,
        _ => return Err(Error::tensor(&vi.name, "graph input is not a tensor")),
    };
    let shape = tt.shape.as_ref().ok_or_else(|| Error::tensor(&vi.name, "graph input has no shape"))?;
    shape
        .dim
        .iter()
        .map(|d| {
            use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
            match &d.value {
                Some(D::DimValue(v)) if *v > 0 => Ok(*v as usize),
                Some(D::DimValue(v)) => Err(Error::tensor(&vi.name, format!("graph input dimension {} is not positive", v))),
                _ => {
                    // A symbolic (batch) dimension: verify with 1.
                    dynamic.push(vi.name.clone());
                    Ok(1)
                }
            }
        })
        .collect()
}

/// When node `k` is MatMul(x, W) whose only reader is Add(product, b) with `b` a 1-D
/// float initializer, returns (index of that Add, b).
fn matmul_bias(nodes: &[NodeProto], k: usize, consumers: &HashMap<&str, usize>, st: &State) -> Option<(usize, String)> {
    let out = nodes[k].output.first()?;
    if consumers.get(out.as_str()) != Some(&1) {
        return None;
    }
    let j = nodes.iter().position(|m| m.input.iter().any(|i| i == out))?;
    let add = &nodes[j];
    if add.op_type != "Add" || add.input.len() != 2 || add.output.len() != 1 || add.output[0].is_empty() {
        return None;
    }
    let other = &st.resolve(if add.input[0] == *out { &add.input[1] } else { &add.input[0] });
    (st.weights.contains(other) && st.graph.params.get(other).map(Vec::len) == Some(1)).then(|| (j, other.clone()))
}

#[derive(Default)]
struct State {
    graph: Graph,
    weights: Weights,
    passthrough: BTreeMap<String, TensorProto>,
    dtypes: BTreeMap<String, FloatType>,
    alias: HashMap<String, String>,
    /// Tensors known to be rank 2 (where a MatMul is a Linear).
    rank2: HashSet<String>,
    names: HashSet<String>,
}

impl State {
    /// `raw`: the tensor's `raw_data` when it was left in the file; `decoded`: its
    /// values when already decoded.
    fn add_initializer(&mut self, t: &TensorProto, raw: Option<&[u8]>, decoded: Option<Decoded>, ext: &mut ExternalData) -> Result<()> {
        if t.name.is_empty() {
            return Err(Error::tensor("<unnamed>", "initializer without a name"));
        }
        if self.graph.params.contains_key(&t.name) {
            return Err(Error::tensor(&t.name, "initializer defined twice"));
        }
        if FloatType::from_onnx(t.data_type).is_some() {
            let (ft, shape, data) = match decoded {
                Some(d) => d,
                None => decode_with(t, raw, ext)?,
            };
            self.graph.params.insert(t.name.clone(), shape.clone());
            self.weights.insert(t.name.clone(), Tensor::from_parts(shape, data));
            self.dtypes.insert(t.name.clone(), ft);
        } else {
            self.graph.params.insert(t.name.clone(), dims(t)?);
            let mut t = t.clone();
            if let Some(raw) = raw {
                t.raw_data = raw.to_vec();
            }
            self.passthrough.insert(t.name.clone(), t);
        }
        Ok(())
    }

    /// `name` read through Identity aliases.
    fn resolve(&self, name: &str) -> String {
        let mut n = name;
        while let Some(a) = self.alias.get(n) {
            n = a;
        }
        n.to_string()
    }

    fn is_float_param(&self, name: &str) -> bool {
        self.weights.contains(name)
    }

    fn param_shape(&self, name: &str) -> Option<&Vec<usize>> {
        self.weights.contains(name).then(|| self.graph.params.get(name)).flatten()
    }

    fn unique_name(&mut self, n: &NodeProto, k: usize) -> String {
        let base = if n.name.is_empty() { format!("{}_{}", n.op_type, k) } else { n.name.clone() };
        let mut name = base.clone();
        let mut i = 1;
        while !self.names.insert(name.clone()) {
            name = format!("{}_{}", base, i);
            i += 1;
        }
        name
    }

    /// Imports one node; returns whether it absorbed `bias_add`.
    fn import_node(&mut self, n: &NodeProto, k: usize, bias_add: Option<(&NodeProto, String)>) -> Result<bool> {
        let name = self.unique_name(n, k);
        let data_inputs: Vec<String> = n.input.iter().filter(|i| !i.is_empty()).cloned().collect();
        let outputs: Vec<String> = n.output.iter().filter(|o| !o.is_empty()).cloned().collect();
        let known = if n.domain.is_empty() || n.domain == "ai.onnx" { self.known_op(n, bias_add.as_ref().map(|(_, b)| b.as_str())) } else { None };
        match known {
            Some(KnownOp::Alias) if outputs.len() == 1 && data_inputs.len() == 1 && !self.graph.outputs.contains(&outputs[0]) => {
                self.alias.insert(outputs[0].clone(), data_inputs[0].clone());
            }
            Some(KnownOp::Op(op, inputs)) if outputs.len() == 1 => {
                let out = match &bias_add {
                    Some((add, _)) if matches!(op, Op::Linear(_)) => add.output[0].clone(),
                    _ => outputs[0].clone(),
                };
                if matches!(op, Op::Flatten | Op::Linear(_)) {
                    self.rank2.insert(out.clone());
                }
                let absorbed = bias_add.is_some() && matches!(op, Op::Linear(_));
                self.graph.nodes.push(Node { name, op, inputs, outputs: vec![out] });
                return Ok(absorbed);
            }
            _ => {
                let payload = n.write_to_bytes().map_err(|e| Error::unsupported(&name, format!("cannot re-encode node: {}", e)))?;
                // Reductions with their axes as an attribute (opset < 18) and Flatten
                // keep a known shape.
                let shape_hint = match n.op_type.as_str() {
                    t if t.starts_with("Reduce") && data_inputs.len() == 1 => {
                        attrs::ints(n, "axes").map(|axes| crate::graph::ShapeHint::Reduce { axes, keepdims: attrs::int(n, "keepdims", 1) != 0 })
                    }
                    "Flatten" => Some(crate::graph::ShapeHint::Flatten { axis: attrs::int(n, "axis", 1) }),
                    _ => None,
                };
                let why = Some(carried_why(n));
                self.graph.nodes.push(Node {
                    name,
                    op: Op::Opaque(Opaque { op_type: n.op_type.clone(), payload, shape_hint, why }),
                    inputs: data_inputs,
                    outputs,
                });
            }
        }
        Ok(false)
    }

    /// The IR form of a node, when it is one repfuse models in this exact form.
    fn known_op(&mut self, n: &NodeProto, bias: Option<&str>) -> Option<KnownOp> {
        let inp = |i: usize| n.input.get(i).filter(|s| !s.is_empty()).cloned();
        let act = |a: Activation| Some(KnownOp::Op(Op::Activation(a), vec![inp(0)?]));
        match n.op_type.as_str() {
            "Conv" => {
                let (x, w) = (inp(0)?, inp(1)?);
                let ws = self.param_shape(&w)?.clone();
                let b = inp(2);
                if ws.len() != 4
                    || b.as_ref().is_some_and(|b| !self.is_float_param(b))
                    || !matches!(attrs::string(n, "auto_pad").as_deref(), None | Some("NOTSET"))
                {
                    return None;
                }
                let groups = usize::try_from(attrs::int(n, "group", 1)).ok().filter(|&g| g > 0)?;
                let conv = Conv2d {
                    weight: w,
                    bias: b,
                    in_channels: ws[1].checked_mul(groups)?,
                    out_channels: ws[0],
                    kernel: [ws[2], ws[3]],
                    stride: attrs::pair(attrs::ints(n, "strides"), [1, 1])?,
                    pads: attrs::quad(attrs::ints(n, "pads"))?,
                    dilation: attrs::pair(attrs::ints(n, "dilations"), [1, 1])?,
                    groups,
                };
                Some(KnownOp::Op(Op::Conv2d(conv), vec![x]))
            }
            "BatchNormalization" => {
                let names: Vec<String> = (1..5).map(inp).collect::<Option<_>>()?;
                if !names.iter().all(|p| self.param_shape(p).is_some_and(|s| s.len() == 1))
                    || attrs::int(n, "training_mode", 0) != 0
                    || n.output.iter().skip(1).any(|o| !o.is_empty())
                {
                    return None;
                }
                let channels = self.param_shape(&names[0])?[0];
                let bn = BatchNorm {
                    gamma: names[0].clone(),
                    beta: names[1].clone(),
                    mean: names[2].clone(),
                    var: names[3].clone(),
                    eps: attrs::float(n, "epsilon", 1e-5),
                    channels,
                    written_as: None,
                };
                Some(KnownOp::Op(Op::BatchNorm(bn), vec![inp(0)?]))
            }
            "Gemm" => {
                let (x, w) = (inp(0)?, inp(1)?);
                let ws = self.param_shape(&w)?.clone();
                let c = inp(2);
                if ws.len() != 2 || attrs::int(n, "transA", 0) != 0 || attrs::float(n, "alpha", 1.0) != 1.0 || attrs::float(n, "beta", 1.0) != 1.0 {
                    return None;
                }
                let weight = if attrs::int(n, "transB", 0) == 1 { w } else { self.transposed(&w)? };
                let out = self.graph.params[&weight][0];
                if c.as_ref().is_some_and(|c| self.param_shape(c) != Some(&vec![out])) {
                    return None;
                }
                let in_features = self.graph.params[&weight][1];
                Some(KnownOp::Op(Op::Linear(Linear { weight, bias: c, in_features, out_features: out }), vec![x]))
            }
            "MatMul" => {
                let (x, w) = (inp(0)?, inp(1)?);
                if !self.rank2.contains(&x) || self.param_shape(&w)?.len() != 2 {
                    return None;
                }
                let weight = self.transposed(&w)?;
                let [out, in_features] = [self.graph.params[&weight][0], self.graph.params[&weight][1]];
                if bias.is_some_and(|b| self.param_shape(b) != Some(&vec![out])) {
                    return None;
                }
                Some(KnownOp::Op(Op::Linear(Linear { weight, bias: bias.map(str::to_string), in_features, out_features: out }), vec![x]))
            }
            "Add" | "Sum" => {
                let ins: Vec<String> = n.input.clone();
                if ins.is_empty() || ins.iter().any(|i| i.is_empty() || self.graph.params.contains_key(i)) || (n.op_type == "Add" && ins.len() != 2) {
                    return None;
                }
                Some(KnownOp::Op(Op::Add, ins))
            }
            "Concat" if attrs::int(n, "axis", 0) == 1 && n.input.iter().all(|i| !self.graph.params.contains_key(i)) => {
                Some(KnownOp::Op(Op::Concat, n.input.clone()))
            }
            "AveragePool" => {
                let kernel = attrs::pair(attrs::ints(n, "kernel_shape"), [0, 0])?;
                if kernel.contains(&0)
                    || !matches!(attrs::string(n, "auto_pad").as_deref(), None | Some("NOTSET"))
                    || attrs::ints(n, "dilations").is_some_and(|d| d.iter().any(|&x| x != 1))
                {
                    return None;
                }
                let p = AvgPool2d {
                    kernel,
                    stride: attrs::pair(attrs::ints(n, "strides"), [1, 1])?,
                    pads: attrs::quad(attrs::ints(n, "pads"))?,
                    count_include_pad: attrs::int(n, "count_include_pad", 0) != 0,
                    ceil_mode: attrs::int(n, "ceil_mode", 0) != 0,
                };
                Some(KnownOp::Op(Op::AvgPool2d(p), vec![inp(0)?]))
            }
            "GlobalAveragePool" => Some(KnownOp::Op(Op::GlobalAvgPool, vec![inp(0)?])),
            "Flatten" if attrs::int(n, "axis", 1) == 1 => Some(KnownOp::Op(Op::Flatten, vec![inp(0)?])),
            "Identity" => Some(KnownOp::Alias),
            "Relu" => act(Activation::Relu),
            "Sigmoid" => act(Activation::Sigmoid),
            "Tanh" => act(Activation::Tanh),
            "LeakyRelu" => act(Activation::LeakyRelu(attrs::float(n, "alpha", 0.01))),
            "HardSwish" => act(Activation::HardSwish),
            "HardSigmoid" if (attrs::float(n, "alpha", 0.2) - 1.0 / 6.0).abs() < 1e-7 && attrs::float(n, "beta", 0.5) == 0.5 => act(Activation::HardSigmoid),
            "Gelu" if attrs::string(n, "approximate").is_none_or(|a| a == "none") => act(Activation::Gelu),
            _ => None,
        }
    }

    /// Adds `name.T`, the transpose of a 2-D float initializer (MatMul/Gemm weights
    /// `[I, O]` become Linear's `[O, I]`).
    fn transposed(&mut self, name: &str) -> Option<String> {
        self.weights.contains(name).then(|| add_transposed(&mut self.graph, &mut self.weights, &mut self.dtypes, name))
    }
}

/// Adds `name.T`, the transpose of the 2-D float initializer `name`, once (in its
/// float type), and returns that name. The one place a weight is transposed at import
/// (Gemm/MatMul weights `[I, O]` becoming Linear's `[O, I]`).
pub(super) fn add_transposed(g: &mut Graph, w: &mut Weights, dtypes: &mut BTreeMap<String, FloatType>, name: &str) -> String {
    let tname = format!("{}.T", name);
    if !w.contains(&tname) {
        let t = w.get(name).expect("callers pass a float initializer").clone();
        let [r, c] = [t.shape()[0], t.shape()[1]];
        let data: Vec<f32> = (0..c * r).map(|k| t.data()[(k % r) * c + k / r]).collect();
        w.insert(tname.clone(), Tensor::from_parts(vec![c, r], data));
        g.params.insert(tname.clone(), vec![c, r]);
        if let Some(ft) = dtypes.get(name).copied() {
            dtypes.insert(tname.clone(), ft);
        }
    }
    tname
}

enum KnownOp {
    Op(Op, Vec<String>),
    Alias,
}

//! ONNX -> IR. Known ops whose parameters are initializers become IR ops; anything
//! else (or a known op in a form we do not model) becomes Opaque and is carried
//! through unchanged, attributes and all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use onnx_protobuf::{Message, ModelProto, NodeProto, TensorProto};

use super::attrs;
use super::tensor::{decode_into, decode_with, dims, float_header, ExternalData, FloatType};
use super::OnnxModel;
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, Op, Opaque, ValueInfo};
use crate::tensor::Tensor;
use crate::weights::Weights;

fn is_external(t: &TensorProto) -> bool {
    t.data_location.enum_value() == Ok(onnx_protobuf::tensor_proto::DataLocation::EXTERNAL)
}

/// ONNX ops the reader handles itself or lifts in a pass after reading (constant
/// arithmetic, `src/io/onnx/arith.rs`), besides those an op file claims.
const READER_OPS: &[&str] = &["Identity", "Constant", "Sub", "Mul", "Div", "Neg", "Add"];

/// Whether some part of the reader models ONNX op `op_type` in some form.
fn is_modelled(op_type: &str) -> bool {
    READER_OPS.contains(&op_type) || crate::ops::ONNX_READERS.iter().any(|(names, _)| names.contains(&op_type))
}

/// Why node `n` is carried through unchanged, in words for `inspect`.
pub(super) fn carried_why(n: &NodeProto) -> String {
    if !super::is_onnx_domain(&n.domain) {
        format!("op of domain `{}`: not modelled, carried unchanged", n.domain)
    } else if is_modelled(&n.op_type) {
        "a form repfuse does not model (attributes, rank, or operands computed at run time): carried unchanged".into()
    } else {
        "op not modelled by repfuse: carried unchanged".into()
    }
}

/// A float initializer's type, shape and values.
/// A float initializer decoded into the arena: its file type and tensor.
type Decoded = (FloatType, Tensor);
/// A float initializer's file type and shape.
type Header = (FloatType, Vec<usize>);

/// Reads an ONNX file (and its external data) into the IR.
pub fn read_onnx(path: &Path) -> Result<OnnxModel> {
    read_onnx_mapped(path, &crate::io::FileBytes::open(path)?)
}

/// `read_onnx_bytes` on a mapped file: each float weight's pages are released once
/// decoded (`FileBytes::release`), so the file is not resident beside its weights.
pub fn read_onnx_mapped(path: &Path, bytes: &crate::io::FileBytes) -> Result<OnnxModel> {
    read(path, bytes, Some(bytes))
}

/// Same as `read_onnx` with the bytes already in memory (`path` locates external
/// data and names the file in errors).
pub fn read_onnx_bytes(path: &Path, bytes: &[u8]) -> Result<OnnxModel> {
    read(path, bytes, None)
}

fn read(path: &Path, bytes: &[u8], mapped: Option<&crate::io::FileBytes>) -> Result<OnnxModel> {
    let file_err = |why: String| Error::File { path: path.to_path_buf(), why };
    // The weights stay in `bytes` (a mapped file): protobuf parses the rest.
    let stripped = super::wire::strip_initializer_data(bytes).map_err(|e| file_err(format!("not a valid ONNX model (protobuf: {})", e)))?;
    let proto = ModelProto::parse_from_bytes(&stripped.bytes).map_err(|e| file_err(format!("not a valid ONNX model (protobuf: {})", e)))?;
    let g = proto.graph.as_ref().ok_or_else(|| file_err("the model has no graph".into()))?;
    // The walk above touched every tensor's header, which mapped the pages around
    // each (most of a model of small tensors): give them all back, so the file is not
    // resident beside the arena while the weights are decoded (each decode maps its
    // own bytes again, from the page cache).
    if let Some(m) = mapped {
        m.release(0..bytes.len());
    }
    // protobuf parsing accepts a file cut inside a nested message; a model always
    // declares its opset (written last by exporters) and has nodes and outputs, so
    // their absence means a truncated or foreign file.
    let opset = proto.opset_import.iter().find(|o| super::is_onnx_domain(&o.domain)).map(|o| o.version);
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
    // Float weights in the file decode on every core, into one arena (one mapping
    // with huge pages, see `arena`): the copies and the page faults of their new
    // memory are most of reading a model. A tensor whose header is bad keeps no slot
    // and is decoded (and its error reported) on its own below.
    let in_arena = |t: &TensorProto, raw: &Option<&[u8]>| raw.is_some() && !is_external(t) && FloatType::from_onnx(t.data_type).is_some();
    // Only a tensor whose stored bytes match its header gets a slot: a header that
    // claims more values than the file holds must not size the arena.
    let lens: Vec<Option<usize>> = g
        .initializer
        .iter()
        .zip(&raws)
        .map(|(t, raw)| match (in_arena(t, raw), float_header(t), raw) {
            (true, Ok((ft, _, n)), Some(r)) => (n.checked_mul(ft.size()) == Some(r.len())).then_some(n),
            _ => None,
        })
        .collect();
    // Decoded: a weight's first `read` bytes in the map are not needed again here.
    let release = |i: usize, read: usize| {
        if let (Some(m), Some(Some(r))) = (mapped, stripped.raw.get(i)) {
            m.release(r.start..r.start + read.min(r.len()));
        }
    };
    let filled = crate::arena::Arena::fill_parallel(&lens, crate::arena::Pages::GiveBack, |i, slot| {
        slot.map(|out| {
            let t = &g.initializer[i];
            let d = decode_into(t, raws[i], &mut ExternalData::new(path), out, &mut |read| release(i, read))
                .and_then(|_| float_header(t))
                .map(|(ft, shape, _)| (ft, shape));
            release(i, usize::MAX);
            d
        })
    });
    let decoded: Vec<Option<Result<Decoded>>> = match filled {
        Some(f) => f
            .results
            .into_iter()
            .zip(&f.starts)
            .map(|(d, start): (Option<Result<Header>>, _)| {
                d.map(|r| r.map(|(ft, shape)| (ft, Tensor::in_arena(&f.arena, start.expect("a decoded tensor has a slot"), shape))))
            })
            .collect(),
        // Too small for an arena: each weight in its own Vec, still decoded on every
        // core with its map pages released.
        None => {
            use rayon::prelude::*;
            g.initializer
                .par_iter()
                .zip(&raws)
                .enumerate()
                .map(|(i, (t, raw))| {
                    in_arena(t, raw).then(|| {
                        let d = decode_with(t, *raw, &mut ExternalData::new(path)).map(|(ft, shape, data)| (ft, Tensor::from_parts(shape, data)));
                        release(i, usize::MAX);
                        d
                    })
                })
                .collect()
        }
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
    let declared = super::const_fold::declared_types(g);
    for (k, n) in g.node.iter().enumerate() {
        if skip.contains(&k) {
            continue;
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
        // Constants, and constants computed from constants (a conv's zero bias, as
        // torch's unoptimized export writes it), become initializers; a graph output
        // stays a node's.
        if !n.output.first().is_some_and(|o| st.graph.outputs.contains(o)) {
            if let Some(t) = super::const_fold::fold(n, &Folding { st: &st, declared: &declared }) {
                st.add_initializer(&t, None, None, &mut ext).map_err(&in_file)?;
                continue;
            }
        }
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
    super::matmul::lift_token_linears(&mut st.graph, &mut st.weights, &mut st.dtypes, &mut st.passthrough, opset.unwrap_or(0));
    super::arith::lift_constant_arith(&mut st.graph, &mut st.weights, &mut st.dtypes).map_err(&in_file)?;
    // The type new tensors are written in: the one holding most of the weights' values.
    // (A float16 export also has a few float32 constants, an eps or a scale, and
    // the first name in order may be one: iFormer's fused convs were written in
    // float32 into a float16 graph, a file ONNX Runtime refuses.)
    let float_type = {
        let mut values: BTreeMap<u8, (usize, FloatType)> = BTreeMap::new();
        for (name, ft) in &st.dtypes {
            let n = st.weights.get(name).map_or(0, |t| t.numel());
            values.entry(*ft as u8).or_insert((0, *ft)).0 += n;
        }
        values.into_values().max_by_key(|(n, _)| *n).map_or(FloatType::F32, |(_, ft)| ft)
    };
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
            let (ft, tensor) = match decoded {
                Some(d) => d,
                None => {
                    let (ft, shape, data) = decode_with(t, raw, ext)?;
                    (ft, Tensor::from_parts(shape, data))
                }
            };
            self.graph.params.insert(t.name.clone(), tensor.shape().to_vec());
            self.weights.insert(t.name.clone(), tensor);
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
        let known = if super::is_onnx_domain(&n.domain) { self.known_op(n, bias_add.as_ref().map(|(_, b)| b.as_str())) } else { None };
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
                // Reductions and Flatten keep a known shape. A reduction's axes are an
                // attribute before opset 18 and a constant input from it (torch's
                // dynamo exporter: every squeeze-excite's ReduceMean), whose shape
                // past it the engine cannot prove when the batch is symbolic.
                let shape_hint = match n.op_type.as_str() {
                    t if t.starts_with("Reduce") => {
                        let axes = match data_inputs.as_slice() {
                            [_] => attrs::ints(n, "axes"),
                            [_, axes] => self.passthrough.get(axes).and_then(super::const_fold::int_values).filter(|a| !a.is_empty()),
                            _ => None,
                        };
                        axes.map(|axes| crate::graph::ShapeHint::Reduce { axes, keepdims: attrs::int(n, "keepdims", 1) != 0 })
                    }
                    "Flatten" => Some(crate::graph::ShapeHint::Flatten { axis: attrs::int(n, "axis", 1) }),
                    "Reshape" => match data_inputs.as_slice() {
                        [_, shape] => self
                            .passthrough
                            .get(shape)
                            .and_then(super::const_fold::int_values)
                            .map(|shape| crate::graph::ShapeHint::Reshape { shape, allowzero: attrs::int(n, "allowzero", 0) != 0 }),
                        _ => None,
                    },
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

    /// The IR form of a node, when it is one repfuse models in this exact form: an
    /// Identity is an alias; else the op file claiming its op type decides.
    fn known_op(&mut self, n: &NodeProto, bias: Option<&str>) -> Option<KnownOp> {
        if n.op_type == "Identity" {
            return Some(KnownOp::Alias);
        }
        let (_, read) = crate::ops::ONNX_READERS.iter().find(|(names, _)| names.contains(&n.op_type.as_str()))?;
        let (op, inputs) = read(n, &mut OnnxImport { st: self, matmul_bias: bias })?;
        Some(KnownOp::Op(op, inputs))
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
        let t = w.get(name).expect("callers pass a float initializer").transposed_2d().expect("callers pass a 2-D initializer");
        g.params.insert(tname.clone(), t.shape().to_vec());
        w.insert(tname.clone(), t);
        if let Some(ft) = dtypes.get(name).copied() {
            dtypes.insert(tname.clone(), ft);
        }
    }
    tname
}

/// What an op file's `from_onnx` may ask of the reader about the node's tensors.
pub struct OnnxImport<'a> {
    st: &'a mut State,
    matmul_bias: Option<&'a str>,
}

impl OnnxImport<'_> {
    /// Input `i` of `n`, when present and not empty.
    pub fn input(&self, n: &NodeProto, i: usize) -> Option<String> {
        n.input.get(i).filter(|s| !s.is_empty()).cloned()
    }

    /// The shape of `name` when it is a float initializer (a weight repfuse can compute with).
    pub fn float_param_shape(&self, name: &str) -> Option<&Vec<usize>> {
        self.st.param_shape(name)
    }

    /// `name` is an initializer of any type.
    pub fn is_param(&self, name: &str) -> bool {
        self.st.graph.params.contains_key(name)
    }

    /// `name` is known to be rank 2 (a graph input, or the output of a Flatten or Linear).
    pub fn is_rank2(&self, name: &str) -> bool {
        self.st.rank2.contains(name)
    }

    /// For a MatMul: the bias of the `Add` that alone reads its product, if any.
    pub fn matmul_bias(&self) -> Option<&str> {
        self.matmul_bias
    }

    /// The name of the transpose of 2-D float initializer `name`, added once.
    pub fn transposed(&mut self, name: &str) -> Option<String> {
        self.st.transposed(name)
    }
}

/// The reader's constants as `const_fold` asks for them: float initializers (small
/// enough to fold), integer initializers, and the element types the file declares.
struct Folding<'a> {
    st: &'a State,
    declared: &'a HashMap<&'a str, i32>,
}

impl super::const_fold::Constants for Folding<'_> {
    fn constant(&self, name: &str) -> Option<super::const_fold::Const> {
        use super::const_fold::{int_values, Const, Values, MAX_FOLDED};
        if let Ok(t) = self.st.weights.get(name) {
            let ft = self.st.dtypes.get(name).copied()?;
            return (t.numel() <= MAX_FOLDED).then(|| Const { shape: t.shape().to_vec(), values: Values::Float(t.data().to_vec(), ft) });
        }
        let t = self.st.passthrough.get(name)?;
        Some(Const { shape: dims(t).ok()?, values: Values::Int(int_values(t)?, t.data_type) })
    }

    fn initializer_shape(&self, name: &str) -> Option<&[usize]> {
        self.st.graph.params.get(name).map(Vec::as_slice)
    }

    fn elem_type(&self, name: &str) -> Option<i32> {
        let initializer = || self.st.dtypes.get(name).map(|ft| ft.onnx() as i32).or_else(|| self.st.passthrough.get(name).map(|t| t.data_type));
        self.declared.get(name).copied().or_else(initializer)
    }
}

enum KnownOp {
    Op(Op, Vec<String>),
    Alias,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::ShapeHint;

    /// A reduction whose axes are a constant input (opset 18, torch's dynamo
    /// exporter) keeps a known output shape without the engine's analysis: the hint
    /// is read from the initializer and applies with that second input present.
    #[test]
    fn a_reduction_with_constant_axes_as_an_input_keeps_its_shape() {
        let mut st = State::default();
        let mut axes = TensorProto::new();
        axes.name = "axes".into();
        axes.dims = vec![2];
        axes.data_type = onnx_protobuf::tensor_proto::DataType::INT64 as i32;
        axes.raw_data = [2i64, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
        st.add_initializer(&axes, None, None, &mut ExternalData::new(Path::new(""))).unwrap();
        st.graph.inputs.push(ValueInfo { name: "x".into(), shape: vec![2, 4, 5, 5] });
        let mut n = attrs::node_proto("mean", "ReduceMean", vec!["x".into(), "axes".into()], vec!["m".into()]);
        n.attribute.push(attrs::make_int("keepdims", 1));
        st.import_node(&n, 0, None).unwrap();
        let Op::Opaque(o) = &st.graph.nodes[0].op else { panic!("ReduceMean is carried: {:?}", st.graph.nodes[0].op) };
        assert_eq!(o.shape_hint, Some(ShapeHint::Reduce { axes: vec![2, 3], keepdims: true }));
        let shapes = crate::graph::infer_shapes_seeded(&st.graph, Default::default()).unwrap();
        assert_eq!(shapes.get("m"), Some(&vec![2, 4, 1, 1]));
    }
}

//! Token-wise linear layers, as exporters write them, made into `Linear` ops the rules
//! fold batch norms into. LeViT's `LinearNorm` is `bn(linear(x).flatten(0, 1))` on
//! `[B, N, C]` tokens; PyTorch exports it as `MatMul(x, Transpose(W)) -> Flatten(axis)
//! -> BatchNormalization`. Flattening commutes with a matmul over the last axis, so
//! the chain is rewritten as `Flatten(x) -> Linear(W) -> BatchNormalization`, which
//! `fold_bn_into_conv` then folds like any Linear + BN1d.
//!
//! Exact when the batch norm's channels equal the matmul's output features: then the
//! flattened output is `[M, O]`, every axis between the flatten axis and the last has
//! size 1, and flattening the input at the same axis gives `[M, I]` rows in the same
//! order. The weight must be a constant (an initializer, or a Transpose of one).
//!
//! With a dynamic batch, TorchScript's export also reads the product's shape for
//! `reshape_as` (`Shape(MatMul(x, W))`), which no constant replaces. The product
//! goes, so each such full `Shape` is computed from the input instead:
//! `Concat(Shape(x)[0:-1], [O])`, which is the product's shape for any `x` (a matmul
//! by a 2-D weight keeps every axis of `x` but the last, which becomes `O`). That
//! needs `Shape`'s `end` (opset 15).
//!
//! torch's dynamo exporter writes the flatten as `Reshape(product, [rows, O])` (a
//! constant shape, `rows` -1 with a dynamic batch); that is the same rows, and
//! becomes `Reshape(x, [rows, I])`.

use std::collections::{BTreeMap, HashMap};

use onnx_protobuf::{Message, NodeProto, TensorProto};

use super::attrs::{make_int, node_proto};
use super::const_fold::{Const, Values};
use super::tensor::FloatType;
use crate::graph::{Graph, Linear, Node, Op, Opaque};
use crate::weights::Weights;

/// A full `Shape` of a tensor: `Shape` without `start` or `end`.
fn is_full_shape(n: &Node) -> bool {
    let Op::Opaque(o) = &n.op else { return false };
    o.op_type == "Shape"
        && n.inputs.len() == 1
        && NodeProto::parse_from_bytes(&o.payload).is_ok_and(|p| p.domain.is_empty() && p.attribute.iter().all(|a| a.name != "start" && a.name != "end"))
}

/// Rewrites every matching MatMul -> Flatten -> BatchNorm chain. `opset`: the
/// model's default-domain opset (whether a product's `Shape` can be rewritten).
pub(super) fn lift_token_linears(
    g: &mut Graph,
    w: &mut Weights,
    dtypes: &mut BTreeMap<String, FloatType>,
    passthrough: &mut BTreeMap<String, TensorProto>,
    opset: i64,
) {
    let mut readers: HashMap<String, usize> = HashMap::new();
    for n in &g.nodes {
        for i in &n.inputs {
            *readers.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &g.outputs {
        *readers.entry(o.clone()).or_default() += 1;
    }
    let producer: HashMap<String, usize> = g.nodes.iter().enumerate().flat_map(|(k, n)| n.outputs.iter().map(move |o| (o.clone(), k))).collect();
    // Readers of each tensor that are not full `Shape`s (see the module doc).
    let mut shape_readers: HashMap<&str, Vec<usize>> = HashMap::new();
    if opset >= 15 {
        for (k, n) in g.nodes.iter().enumerate().filter(|(_, n)| is_full_shape(n)) {
            shape_readers.entry(n.inputs[0].as_str()).or_default().push(k);
        }
    }
    let data_readers = |t: &str| readers.get(t).copied().unwrap_or(0) - shape_readers.get(t).map_or(0, Vec::len);
    let consumer = |t: &str| g.nodes.iter().position(|n| n.inputs.iter().any(|i| i == t) && !(is_full_shape(n) && opset >= 15));
    let mut rewrites: Vec<(usize, usize, Linear, Option<usize>)> = vec![];
    for (k, n) in g.nodes.iter().enumerate() {
        let Op::Opaque(o) = &n.op else { continue };
        if o.op_type != "MatMul" || n.inputs.len() != 2 || data_readers(&n.outputs[0]) != 1 || g.outputs.contains(&n.outputs[0]) {
            continue;
        }
        // The weight as Linear wants it, [O, I]: the initializer under a 2-D Transpose.
        let Some((weight, transpose)) = linear_weight(g, w, &n.inputs[1], &producer, &readers) else { continue };
        let Some(ws) = g.params.get(&weight) else { continue };
        // A plain [in, out] initializer is transposed below, once the chain matches.
        let [out_f, in_f] = if transpose.is_some() { [ws[0], ws[1]] } else { [ws[1], ws[0]] };
        let Some(f) = consumer(&n.outputs[0]) else { continue };
        let Op::Opaque(fo) = &g.nodes[f].op else { continue };
        let flattens = match fo.op_type.as_str() {
            "Flatten" => g.nodes[f].inputs.len() == 1,
            "Reshape" => reshape_to_rows(&g.nodes[f], passthrough).is_some_and(|(_, c)| c == out_f as i64),
            _ => false,
        };
        if !flattens || readers.get(&g.nodes[f].outputs[0]) != Some(&1) {
            continue;
        }
        let Some(b) = consumer(&g.nodes[f].outputs[0]) else { continue };
        if !matches!(&g.nodes[b].op, Op::BatchNorm(bn) if bn.channels == out_f) {
            continue;
        }
        rewrites.push((k, f, Linear { weight, bias: None, in_features: in_f, out_features: out_f }, transpose));
    }
    // Shapes of the products that go, as (Shape node, x, O).
    let mut reshaped: Vec<(String, String, usize)> = vec![];
    for (k, _, l, _) in &rewrites {
        let (x, product) = (&g.nodes[*k].inputs[0], &g.nodes[*k].outputs[0]);
        for &s in shape_readers.get(product.as_str()).into_iter().flatten() {
            reshaped.push((g.nodes[s].name.clone(), x.clone(), l.out_features));
        }
    }
    for (_, _, l, transpose) in rewrites.iter_mut() {
        if transpose.is_none() {
            l.weight = super::import::add_transposed(g, w, dtypes, &l.weight);
        }
    }
    let mut dead = vec![];
    for (k, f, linear, transpose) in rewrites {
        let x = g.nodes[k].inputs[0].clone();
        let flat_in = format!("{}.repfuse_flat", g.nodes[k].outputs[0]);
        let flat_out = g.nodes[f].outputs[0].clone();
        // The flatten now reads the matmul's input; the Linear makes its old output.
        // A Reshape to `[-1, O]` becomes one to `[-1, I]` (a new constant: the old
        // one may be shared).
        let mut inputs = vec![x];
        let rows_of = reshape_to_rows(&g.nodes[f], passthrough).map(|(rows, _)| rows);
        if let Some(rows) = rows_of {
            let c = Const { shape: vec![2], values: Values::Int(vec![rows, linear.in_features as i64], onnx_protobuf::tensor_proto::DataType::INT64 as i32) };
            let rows = format!("{}.repfuse_rows", flat_in);
            g.params.insert(rows.clone(), vec![2]);
            passthrough.insert(rows.clone(), c.to_proto(&rows));
            inputs.push(rows);
        }
        let Op::Opaque(fo) = &mut g.nodes[f].op else { unreachable!() };
        if let (Some(crate::graph::ShapeHint::Reshape { shape, .. }), Some(rows)) = (&mut fo.shape_hint, rows_of) {
            *shape = vec![rows, linear.in_features as i64];
        }
        if let Ok(mut p) = NodeProto::parse_from_bytes(&fo.payload) {
            p.input = inputs.clone();
            p.output = vec![flat_in.clone()];
            fo.payload = p.write_to_bytes().unwrap_or_default();
        }
        g.nodes[f].inputs = inputs;
        g.nodes[f].outputs = vec![flat_in.clone()];
        let name = g.nodes[k].name.clone();
        g.nodes[k] = Node { name, op: Op::Linear(linear), inputs: vec![flat_in], outputs: vec![flat_out] };
        dead.extend(transpose);
    }
    dead.sort_unstable();
    for d in dead.into_iter().rev() {
        g.nodes.remove(d);
    }
    for (shape, x, features) in reshaped {
        shape_from_input(g, passthrough, &shape, x, features);
    }
    // The Linear now follows its Flatten.
    let _ = g.sort_topologically();
}

/// For a Reshape to a constant `[rows, c]`, rows `-1` or positive (torch's dynamo
/// exporter writes `flatten(0, 1)` of `[B, N, C]` tokens so: `[-1, C]` with a
/// dynamic batch, `[B * N, C]` without), `(rows, c)`. On a product `[.., c]` that
/// the Reshape accepts, `rows` is the product of its leading axes, so the same rows
/// of the input `[.., I]` are `[rows, I]`.
fn reshape_to_rows(n: &Node, passthrough: &BTreeMap<String, TensorProto>) -> Option<(i64, i64)> {
    let shape = passthrough.get(n.inputs.get(1)?)?;
    match super::const_fold::int_values(shape)?.as_slice() {
        &[rows, c] if (rows == -1 || rows > 0) && c > 0 => Some((rows, c)),
        _ => None,
    }
}

/// Makes the full `Shape` node named `shape` (of a product that goes) compute the
/// same value from the product's input `x`: `Shape(x, end=-1)`, then a new Concat
/// with `[features]` writing the old output. The Concat is appended; the caller
/// sorts the graph.
fn shape_from_input(g: &mut Graph, passthrough: &mut BTreeMap<String, TensorProto>, shape: &str, x: String, features: usize) {
    let Some(n) = g.nodes.iter_mut().find(|n| n.name == shape) else { return };
    let Op::Opaque(o) = &mut n.op else { return };
    let Ok(mut p) = NodeProto::parse_from_bytes(&o.payload) else { return };
    let out = n.outputs[0].clone();
    let lead = format!("{}.repfuse_lead", out);
    let features_name = format!("{}.repfuse_features", out);
    p.input = vec![x.clone()];
    p.output = vec![lead.clone()];
    p.attribute.push(make_int("end", -1));
    o.payload = p.write_to_bytes().unwrap_or_default();
    n.inputs = vec![x];
    n.outputs = vec![lead.clone()];
    let concat_name = format!("{}.repfuse_concat", n.name);
    let mut c = node_proto(&concat_name, "Concat", vec![lead.clone(), features_name.clone()], vec![out.clone()]);
    c.attribute.push(make_int("axis", 0));
    let features_const = Const { shape: vec![1], values: Values::Int(vec![features as i64], onnx_protobuf::tensor_proto::DataType::INT64 as i32) };
    g.params.insert(features_name.clone(), vec![1]);
    passthrough.insert(features_name.clone(), features_const.to_proto(&features_name));
    let why = Some(super::import::carried_why(&c));
    let concat = Opaque { op_type: "Concat".into(), payload: c.write_to_bytes().unwrap_or_default(), shape_hint: None, why };
    g.nodes.push(Node { name: concat_name, op: Op::Opaque(concat), inputs: vec![lead, features_name], outputs: vec![out] });
}

/// The weight a MatMul's second input amounts to: a 2-D float initializer behind a
/// Transpose only this MatMul reads (`[out, in]` already; the Transpose is returned
/// for removal), or a 2-D float initializer `[in, out]` itself (no Transpose).
fn linear_weight(g: &Graph, w: &Weights, t: &str, producer: &HashMap<String, usize>, readers: &HashMap<String, usize>) -> Option<(String, Option<usize>)> {
    if w.contains(t) {
        return (g.params.get(t).map(Vec::len) == Some(2)).then(|| (t.to_string(), None));
    }
    let p = *producer.get(t)?;
    let n = &g.nodes[p];
    let Op::Opaque(o) = &n.op else { return None };
    if o.op_type != "Transpose" || n.inputs.len() != 1 || readers.get(t) != Some(&1) {
        return None;
    }
    let src = &n.inputs[0];
    if !w.contains(src) || g.params.get(src).map(Vec::len) != Some(2) {
        return None;
    }
    let proto = NodeProto::parse_from_bytes(&o.payload).ok()?;
    let perm = super::attrs::ints(&proto, "perm");
    if !matches!(perm.as_deref(), None | Some([1, 0])) {
        return None;
    }
    Some((src.clone(), Some(p)))
}

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

use std::collections::HashMap;

use onnx_protobuf::{Message, NodeProto};

use crate::graph::{Graph, Linear, Node, Op};
use crate::weights::Weights;

/// Rewrites every matching MatMul -> Flatten -> BatchNorm chain.
pub(super) fn lift_token_linears(g: &mut Graph, w: &mut Weights, dtypes: &mut std::collections::BTreeMap<String, super::tensor::FloatType>) {
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
    let consumer = |t: &str| g.nodes.iter().position(|n| n.inputs.iter().any(|i| i == t));
    let mut rewrites: Vec<(usize, usize, Linear, Option<usize>)> = vec![];
    for (k, n) in g.nodes.iter().enumerate() {
        let Op::Opaque(o) = &n.op else { continue };
        if o.op_type != "MatMul" || n.inputs.len() != 2 || readers.get(&n.outputs[0]) != Some(&1) {
            continue;
        }
        // The weight as Linear wants it, [O, I]: the initializer under a 2-D Transpose.
        let Some((weight, transpose)) = linear_weight(g, w, &n.inputs[1], &producer, &readers) else { continue };
        let Some(ws) = g.params.get(&weight) else { continue };
        // A plain [in, out] initializer is transposed below, once the chain matches.
        let [out_f, in_f] = if transpose.is_some() { [ws[0], ws[1]] } else { [ws[1], ws[0]] };
        let Some(f) = consumer(&n.outputs[0]) else { continue };
        let Op::Opaque(fo) = &g.nodes[f].op else { continue };
        if fo.op_type != "Flatten" || readers.get(&g.nodes[f].outputs[0]) != Some(&1) {
            continue;
        }
        let Some(b) = consumer(&g.nodes[f].outputs[0]) else { continue };
        if !matches!(&g.nodes[b].op, Op::BatchNorm(bn) if bn.channels == out_f) {
            continue;
        }
        rewrites.push((k, f, Linear { weight, bias: None, in_features: in_f, out_features: out_f }, transpose));
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
        let Op::Opaque(fo) = &mut g.nodes[f].op else { unreachable!() };
        if let Ok(mut p) = NodeProto::parse_from_bytes(&fo.payload) {
            p.input = vec![x.clone()];
            p.output = vec![flat_in.clone()];
            fo.payload = p.write_to_bytes().unwrap_or_default();
        }
        g.nodes[f].inputs = vec![x];
        g.nodes[f].outputs = vec![flat_in.clone()];
        let name = g.nodes[k].name.clone();
        g.nodes[k] = Node { name, op: Op::Linear(linear), inputs: vec![flat_in], outputs: vec![flat_out] };
        dead.extend(transpose);
    }
    dead.sort_unstable();
    for d in dead.into_iter().rev() {
        g.nodes.remove(d);
    }
    // The Linear now follows its Flatten.
    let _ = g.sort_topologically();
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

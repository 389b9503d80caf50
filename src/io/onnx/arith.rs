//! Arithmetic with a constant, as exporters write it, lifted into ops the rules
//! understand. PyTorch exports layer scales (`gamma * x`), averaged heads (`/ 2`),
//! absent branches (`x + 0`) and branch differences (`a - b`) as ONNX Mul/Div/Add/Sub.
//! After import, wherever the data operand's shape is known and the constant is a
//! scalar or per-channel (broadcast along axis 1 only):
//!
//! - `x + 0`, `x - 0`, `x * 1`, `x / 1` are dropped (their readers read `x`);
//! - `x * c`, `x / c`, `x + c`, `x - c`, `c - x` become a batch norm with
//!   `gamma = c` (or `1/c`, `±1`), `beta = c` (or `-c`, 0), mean 0, var 1, eps 0 (so
//!   `gamma / sqrt(var + eps)` is `gamma` exactly), which every batch-norm rule folds;
//! - `a - b` of two same-shape tensors becomes `a + neg(b)`, `neg` a batch norm with
//!   gamma -1, so branch differences merge like sums.
//!
//! A stand-in batch norm that survives fusion is written back as the node it came from
//! (`BatchNorm::written_as`), so an unfused layer scale stays a Mul in the file.

use std::collections::{BTreeMap, HashMap};

use onnx_protobuf::{Message, NodeProto};

use super::tensor::FloatType;
use crate::error::Result;
use crate::graph::{BatchNorm, Graph, Node, Op, Shapes, WrittenAs};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// What one arithmetic node becomes.
enum Lift {
    /// Readers of the output read this tensor instead.
    Alias(String),
    /// Replacement nodes, with new parameters.
    Replace(Vec<Node>, Vec<(String, Tensor)>),
}

/// Lifts every liftable node; repeats while lifting makes more shapes known.
pub(super) fn lift_constant_arith(g: &mut Graph, w: &mut Weights, dtypes: &mut BTreeMap<String, FloatType>) -> Result<()> {
    loop {
        // Lenient: a node whose shapes do not check (a broadcast Add, which this pass
        // hands back to ONNX; a bad file, which validation reports with the node at
        // fault when it is fused) just leaves its output unknown.
        let shapes = crate::graph::infer_shapes_seeded(g, crate::graph::Shapes::default())?;
        let mut alias: HashMap<String, String> = HashMap::new();
        let mut changed = false;
        let mut nodes = Vec::with_capacity(g.nodes.len());
        for n in std::mem::take(&mut g.nodes) {
            match lift(&n, &shapes, g, w) {
                Some(Lift::Alias(x)) => {
                    alias.insert(n.outputs[0].clone(), x);
                    changed = true;
                }
                Some(Lift::Replace(new, params)) => {
                    for (name, t) in params {
                        g.params.insert(name.clone(), t.shape().to_vec());
                        if let Some(ft) = n.inputs.iter().find_map(|i| dtypes.get(i)).copied() {
                            dtypes.insert(name.clone(), ft);
                        }
                        w.insert(name, t);
                    }
                    nodes.extend(new);
                    changed = true;
                }
                None => nodes.push(n),
            }
        }
        for n in &mut nodes {
            for i in &mut n.inputs {
                while let Some(a) = alias.get(i) {
                    *i = a.clone();
                }
            }
        }
        g.nodes = nodes;
        if !changed {
            return Ok(());
        }
    }
}

/// The per-channel values of constant `c` (shape `cs`) broadcast against a tensor of
/// shape `xs`, or None when it varies along any axis but 1 (or would grow `x`).
fn per_channel(c: &Tensor, xs: &[usize]) -> Option<Vec<f64>> {
    let cs = c.shape();
    if xs.len() < 2 || cs.len() > xs.len() {
        return None;
    }
    let channels = xs[1];
    let lead = xs.len() - cs.len();
    let mut along_c = false;
    for (i, &d) in cs.iter().enumerate() {
        match (lead + i == 1, d) {
            (_, 1) => {}
            (true, d) if d == channels => along_c = true,
            _ => return None,
        }
    }
    let v = c.data();
    Some((0..channels).map(|k| if along_c { v[k] as f64 } else { v[0] as f64 }).collect())
}

/// An `Add` of tensors whose shapes differ is an ONNX broadcast, which the IR's `Add`
/// does not model: it goes back to being a carried ONNX Add.
///
/// So does an `Add` one of whose inputs became a constant (a gathered table folded by
/// `static_shapes`): the IR's `Add` sums computed tensors only; as a carried ONNX
/// Add, the next round lifts it if the constant is per-channel.
fn broadcast_add(n: &Node, shapes: &Shapes, g: &Graph) -> Option<Lift> {
    let reads_constant = n.inputs.iter().any(|t| g.params.contains_key(t));
    if !reads_constant {
        let ins: Vec<&Vec<usize>> = n.inputs.iter().map(|t| shapes.get(t)).collect::<Option<_>>()?;
        if ins.iter().all(|s| *s == ins[0]) || n.inputs.len() != 2 {
            return None;
        }
    }
    let mut p = NodeProto::new();
    p.name = n.name.clone();
    p.op_type = if n.inputs.len() == 2 { "Add" } else { "Sum" }.into();
    p.input = n.inputs.clone();
    p.output = n.outputs.clone();
    let payload = p.write_to_bytes().ok()?;
    let op = Op::Opaque(crate::graph::Opaque {
        op_type: p.op_type.clone(),
        payload,
        shape_hint: None,
        why: Some("a broadcast sum (operand shapes differ), not a branch merge: carried unchanged".into()),
    });
    Some(Lift::Replace(vec![Node { op, ..n.clone() }], vec![]))
}

fn lift(n: &Node, shapes: &Shapes, g: &Graph, w: &Weights) -> Option<Lift> {
    if n.op == Op::Add {
        return broadcast_add(n, shapes, g);
    }
    let Op::Opaque(o) = &n.op else { return None };
    if !matches!(o.op_type.as_str(), "Add" | "Sub" | "Mul" | "Div") || n.inputs.len() != 2 || n.outputs.len() != 1 {
        return None;
    }
    let proto = NodeProto::parse_from_bytes(&o.payload).ok()?;
    if !super::is_onnx_domain(&proto.domain) || proto.input.len() != 2 {
        return None;
    }
    let out = &n.outputs[0];
    let is_const = |t: &str| w.contains(t);
    let (a, b) = (&n.inputs[0], &n.inputs[1]);
    match (is_const(a), is_const(b)) {
        (false, false) if o.op_type == "Sub" => {
            let (sa, sb) = (shapes.get(a)?, shapes.get(b)?);
            if sa != sb || sa.len() < 2 {
                return None;
            }
            let neg_out = format!("{}.repfuse_neg", out);
            let mut neg = NodeProto::new();
            neg.name = format!("{}.neg", n.name);
            neg.op_type = "Neg".into();
            neg.input = vec![b.clone()];
            neg.output = vec![neg_out.clone()];
            let payload = neg.write_to_bytes().ok()?;
            let gamma = vec![-1.0; sb[1]];
            let (bn, params) = stand_in(&format!("{}.neg", n.name), b, &neg_out, gamma, vec![0.0; sb[1]], WrittenAs { payload, data_input: 0, reads: vec![] });
            let add = Node { name: n.name.clone(), op: Op::Add, inputs: vec![a.clone(), neg_out], outputs: vec![out.clone()] };
            Some(Lift::Replace(vec![bn, add], params))
        }
        (false, true) | (true, false) => {
            let (x, c, const_first) = if is_const(b) { (a, b, false) } else { (b, a, true) };
            let v = per_channel(w.get(c).ok()?, shapes.get(x)?)?;
            let ch = v.len();
            let all = |k: f64| v.iter().all(|&e| e == k);
            let (gamma, beta): (Vec<f64>, Vec<f64>) = match (o.op_type.as_str(), const_first) {
                ("Add", _) if all(0.0) => return alias(g, out, x),
                ("Sub", false) if all(0.0) => return alias(g, out, x),
                ("Mul", _) | ("Div", false) if all(1.0) => return alias(g, out, x),
                ("Add", _) => (vec![1.0; ch], v),
                ("Sub", false) => (vec![1.0; ch], v.iter().map(|e| -e).collect()),
                ("Sub", true) => (vec![-1.0; ch], v),
                ("Mul", _) => (v, vec![0.0; ch]),
                ("Div", false) if v.iter().all(|e| *e != 0.0 && e.is_finite()) => (v.iter().map(|e| 1.0 / e).collect(), vec![0.0; ch]),
                _ => return None,
            };
            let data_input = proto.input.iter().position(|i| i == x)?;
            let written = WrittenAs { payload: o.payload.clone(), data_input, reads: vec![c.clone()] };
            let (bn, params) = stand_in(&n.name, x, out, gamma, beta, written);
            Some(Lift::Replace(vec![bn], params))
        }
        _ => None,
    }
}

/// An alias of `out` to `x`, unless `out` is a graph output (its name must stay).
fn alias(g: &Graph, out: &str, x: &str) -> Option<Lift> {
    (!g.outputs.iter().any(|o| o == out)).then(|| Lift::Alias(x.to_string()))
}

/// A batch norm computing `gamma * x + beta` exactly: mean 0, var 1, eps 0.
fn stand_in(name: &str, x: &str, out: &str, gamma: Vec<f64>, beta: Vec<f64>, written_as: WrittenAs) -> (Node, Vec<(String, Tensor)>) {
    let ch = gamma.len();
    let p = |what: &str| format!("{}.repfuse_{}", name, what);
    let t = |v: Vec<f64>| Tensor::from_parts(vec![ch], v.into_iter().map(|e| e as f32).collect());
    let params = vec![(p("gamma"), t(gamma)), (p("beta"), t(beta)), (p("mean"), t(vec![0.0; ch])), (p("var"), t(vec![1.0; ch]))];
    let bn = BatchNorm { gamma: p("gamma"), beta: p("beta"), mean: p("mean"), var: p("var"), eps: 0.0, channels: ch, written_as: Some(written_as) };
    (Node { name: name.to_string(), op: Op::BatchNorm(bn), inputs: vec![x.to_string()], outputs: vec![out.to_string()] }, params)
}

//! Shape inference. Known ops get exact shapes; outputs of Opaque nodes (and anything
//! downstream of them) stay unknown, which the rewrite rules treat as "cannot prove".

use foldhash::{HashMap, HashMapExt};

use super::{Graph, Node, Op};
use crate::error::Result;

/// Tensor name -> shape, for every tensor whose shape is known.
pub type Shapes = HashMap<String, Vec<usize>>;

/// Output length of one spatial axis of a sliding window, or None when the window does
/// not fit (kernel larger than the padded input).
pub fn window_out(input: usize, kernel: usize, stride: usize, pad: usize, dilation: usize, ceil: bool) -> Option<usize> {
    let extent = dilation.checked_mul(kernel.checked_sub(1)?)?.checked_add(1)?;
    let padded = input.checked_add(pad)?;
    let span = padded.checked_sub(extent)?;
    let mut out = span / stride + 1;
    if ceil && span % stride != 0 {
        out += 1;
        // PyTorch/ONNX: the last window must start inside the input or left padding.
        if (out - 1) * stride >= input + pad.min(input) {
            out -= 1;
        }
    }
    Some(out)
}

/// Infers every known tensor shape. Errors name the node and field at fault.
pub fn infer_shapes(g: &Graph) -> Result<Shapes> {
    infer(g, HashMap::new(), true)
}

/// `infer_shapes` starting from shapes known elsewhere (an ONNX engine's analysis of
/// tensors past ops repfuse does not model), so they propagate through known ops.
///
/// Lenient: a node whose shapes do not check leaves its output unknown instead of
/// failing (the seed may disagree with what the reference models, e.g. a broadcast).
pub fn infer_shapes_seeded(g: &Graph, seed: Shapes) -> Result<Shapes> {
    infer(g, seed, false)
}

/// The output shape of `n` (added to `g` or about to be), from the shapes of its
/// inputs known so far: one node's step of `infer_shapes`, for graphs built node by node.
pub fn infer_node(g: &Graph, n: &Node, shapes: &Shapes) -> Result<Option<Vec<usize>>> {
    let ins: Option<Vec<&Vec<usize>>> = n.inputs.iter().map(|t| shapes.get(t).or_else(|| g.params.get(t))).collect();
    match ins {
        Some(ins) => node_output_shape(n, &ins),
        None => Ok(None),
    }
}

fn infer(g: &Graph, seed: Shapes, strict: bool) -> Result<Shapes> {
    let mut shapes: Shapes = seed;
    // Sized up front (see `validate`): one entry per graph input and node output.
    shapes.reserve(g.tensor_count());
    for v in &g.inputs {
        shapes.insert(v.name.clone(), v.shape.clone());
    }
    for n in &g.nodes {
        // Carried nodes name their constant inputs among their inputs.
        let ins: Option<Vec<&Vec<usize>>> = n.inputs.iter().map(|t| shapes.get(t).or_else(|| g.params.get(t))).collect();
        let out = match ins {
            Some(ins) if strict => node_output_shape(n, &ins)?,
            Some(ins) => node_output_shape(n, &ins).ok().flatten(),
            None => None,
        };
        // A carried node: what the source's own shape analysis proved, if anything.
        let out = match (&n.op, out) {
            (Op::Opaque(_), None) => n.outputs.first().and_then(|o| g.known_shapes.get(o)).cloned(),
            (_, out) => out,
        };
        if let (Some(s), Some(o)) = (out, n.outputs.first()) {
            shapes.entry(o.clone()).or_insert(s);
        }
        // A carried node's other outputs (Split): only the source's analysis knows them.
        if matches!(n.op, Op::Opaque(_)) {
            for o in n.outputs.iter().skip(1) {
                if let Some(s) = g.known_shapes.get(o) {
                    shapes.entry(o.clone()).or_insert_with(|| s.clone());
                }
            }
        }
    }
    Ok(shapes)
}

/// The output shape of `n` from its input shapes (see `OpDef::output_shape`).
fn node_output_shape(n: &Node, ins: &[&Vec<usize>]) -> Result<Option<Vec<usize>>> {
    n.op.def().output_shape(n, ins)
}

/// 2 x multiply-accumulates per sample (batch 1) of one node.
pub fn node_flops(n: &Node, shapes: &Shapes) -> u64 {
    let out = n.outputs.first().and_then(|o| shapes.get(o));
    let Some(out) = out else { return 0 };
    // Saturating: a hostile shape must not overflow (or panic in debug builds).
    let per_sample = out.iter().skip(1).fold(1u64, |a, &d| a.saturating_mul(d as u64));
    n.op.def().flops(n, per_sample)
}

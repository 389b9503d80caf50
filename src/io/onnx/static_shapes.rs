//! Shape arithmetic of a model with static input shapes, folded into constants.
//!
//! PyTorch exports `reshape_as(x)`, window padding and head splitting as chains of
//! Shape -> Gather -> Unsqueeze -> Concat (and Mod/Sub/Div on integers) that compute
//! numbers fixed by the input shape. When every graph input has a static shape, the
//! ONNX engine's analysis proves those integer tensors constant; each becomes an
//! initializer and the nodes that only computed them go. Exact for the declared input
//! shape, which the written model keeps; models with a symbolic dimension are left
//! as they are. Besides fewer nodes, a tensor read only by `Shape` is then read by
//! nothing, so a batch norm after a token-wise linear layer can fold (LeViT).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use onnx_protobuf::TensorProto;

use super::tensor::FloatType;
use crate::graph::{Graph, Op};
use crate::weights::Weights;

/// Whether a known op names `k` among its parameters (a conv weight is not an input).
fn is_op_param(g: &Graph, k: &str) -> bool {
    g.nodes.iter().any(|n| n.op.params().contains(&k))
}

/// Records the engine's shapes of carried outputs, and (static inputs only) folds
/// what it can; leaves the graph as it is when the engine cannot analyse it.
pub(super) fn fold_static_shapes(
    bytes: &[u8],
    path: &Path,
    g: &mut Graph,
    weights: &mut Weights,
    dtypes: &mut BTreeMap<String, FloatType>,
    passthrough: &mut BTreeMap<String, TensorProto>,
    static_inputs: bool,
) {
    if !g.nodes.iter().any(|n| matches!(n.op, Op::Opaque(_))) {
        return;
    }
    let Ok((consts, shapes)) = crate::verify::tract_engine::constant_tensors_and_shapes(bytes, path.parent(), &g.inputs) else { return };
    // Shapes past carried nodes, for the rules to prove what they need.
    let carried: HashSet<&String> = g.nodes.iter().filter(|n| matches!(n.op, Op::Opaque(_))).flat_map(|n| &n.outputs).collect();
    g.known_shapes = shapes.into_iter().filter(|(k, _)| carried.contains(k)).collect();
    if !static_inputs {
        // A symbolic dimension: shape arithmetic is not constant.
        return;
    }
    // Replace each carried node whose every output is a proven integer constant.
    let mut keep = Vec::with_capacity(g.nodes.len());
    let mut folded: HashSet<String> = HashSet::new();
    for n in std::mem::take(&mut g.nodes) {
        let folds = matches!(n.op, Op::Opaque(_)) && !n.outputs.is_empty() && n.outputs.iter().all(|o| consts.contains_key(o) && !g.outputs.contains(o));
        if !folds {
            keep.push(n);
            continue;
        }
        for o in &n.outputs {
            folded.insert(o.clone());
            let c = &consts[o];
            if c.onnx_type == 1 {
                // A float constant (a gate computed from a parameter): a weight like any.
                g.params.insert(o.clone(), c.shape.clone());
                weights.insert(o.clone(), crate::tensor::Tensor::from_parts(c.shape.clone(), c.floats.clone()));
                dtypes.insert(o.clone(), FloatType::F32);
                continue;
            }
            let mut t = TensorProto::new();
            t.name = o.clone();
            t.dims = c.shape.iter().map(|&d| d as i64).collect();
            t.data_type = c.onnx_type;
            t.raw_data = if c.onnx_type == 6 {
                c.values.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect()
            } else {
                c.values.iter().flat_map(|&v| v.to_le_bytes()).collect()
            };
            g.params.insert(o.clone(), c.shape.clone());
            passthrough.insert(o.clone(), t);
        }
    }
    g.nodes = keep;
    // Carried nodes nothing reads any more (the Shape nodes feeding folded Gathers).
    loop {
        let read: HashSet<&String> = g.nodes.iter().flat_map(|n| &n.inputs).chain(&g.outputs).collect();
        let dead: Vec<usize> =
            g.nodes.iter().enumerate().filter(|(_, n)| matches!(n.op, Op::Opaque(_)) && n.outputs.iter().all(|o| !read.contains(o))).map(|(k, _)| k).collect();
        if dead.is_empty() {
            break;
        }
        for k in dead.into_iter().rev() {
            g.nodes.remove(k);
        }
    }
    let read: HashSet<String> = g.nodes.iter().flat_map(|n| n.inputs.iter().cloned()).chain(g.outputs.iter().cloned()).collect();
    // Folded values nothing reads (their readers were folded too), and parameters only
    // folded nodes read (a gate's raw parameter), are not kept.
    let unread: HashSet<String> = g.params.keys().filter(|k| !read.contains(*k) && !is_op_param(g, k)).cloned().collect();
    // One pass that keeps the others' order (removing one by one would shift the map
    // once per name).
    g.params.retain(|k, _| !unread.contains(k));
    for k in unread {
        weights.remove(&k);
        dtypes.remove(&k);
        passthrough.remove(&k);
    }
}

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

use crate::graph::{Graph, Op};

/// Folds what it can; leaves the graph as it is when the engine cannot analyse it.
pub(super) fn fold_static_shapes(bytes: &[u8], path: &Path, g: &mut Graph, passthrough: &mut BTreeMap<String, TensorProto>) {
    if !g.nodes.iter().any(|n| matches!(&n.op, Op::Opaque(o) if o.op_type == "Shape" || o.op_type == "Size")) {
        return;
    }
    let Ok(consts) = crate::verify::tract_engine::constant_int_tensors(bytes, path.parent(), &g.inputs) else { return };
    // Replace each carried node whose every output is a proven integer constant.
    let mut keep = Vec::with_capacity(g.nodes.len());
    for n in std::mem::take(&mut g.nodes) {
        let folds = matches!(n.op, Op::Opaque(_)) && !n.outputs.is_empty() && n.outputs.iter().all(|o| consts.contains_key(o) && !g.outputs.contains(o));
        if !folds {
            keep.push(n);
            continue;
        }
        for o in &n.outputs {
            let c = &consts[o];
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
    passthrough.retain(|k, _| read.contains(k) || !consts.contains_key(k));
    g.params.retain(|k, _| read.contains(k) || !consts.contains_key(k));
}

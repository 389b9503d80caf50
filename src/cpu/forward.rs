//! Forward pass of a graph of known ops: the ground truth every fusion is checked
//! against. Tensors are f32 between ops (as a deployed model stores them) and every
//! reduction sums in f64.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::graph::{Graph, Node};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Runs `g` on `inputs` (by graph input name); returns every graph output by name.
pub fn forward(g: &Graph, weights: &Weights, inputs: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    Ok(run_graph(g, weights, inputs, false)?.into_iter().map(|(k, (v, _))| (k, v)).collect())
}

/// `forward`, and with every output its rounding-error scale `S` (see
/// `error_scale.rs`): the tolerance policy bounds each element's error by `k * u * S`.
pub fn forward_with_error_scale(g: &Graph, weights: &Weights, inputs: &HashMap<String, Tensor>) -> Result<HashMap<String, (Tensor, Tensor)>> {
    run_graph(g, weights, inputs, true)?
        .into_iter()
        .map(|(k, (v, s2))| {
            let s = s2.expect("tracked");
            let s = Tensor::from_parts(s.shape().to_vec(), s.data().iter().map(|x| x.sqrt()).collect());
            Ok((k, (v, s)))
        })
        .collect()
}

type Live = (Tensor, Option<Tensor>);

fn run_graph(g: &Graph, weights: &Weights, inputs: &HashMap<String, Tensor>, track: bool) -> Result<HashMap<String, Live>> {
    let mut live: HashMap<String, Live> = HashMap::new();
    for v in &g.inputs {
        let t = inputs.get(&v.name).ok_or_else(|| Error::tensor(&v.name, "graph input not supplied"))?;
        if t.shape() != v.shape.as_slice() {
            return Err(Error::tensor(&v.name, format!("input has shape {:?}, graph declares {:?}", t.shape(), v.shape)));
        }
        // Inputs are exact: both graphs see the same values.
        live.insert(v.name.clone(), (t.clone(), track.then(|| Tensor::zeros(t.shape().to_vec()))));
    }
    // Refuse before allocating when a tensor would be absurdly large (a hostile file
    // can declare a 65536x65536 input).
    for (t, shape) in crate::graph::infer_shapes(g)? {
        if crate::tensor::checked_numel(&shape).is_none_or(|n| n > crate::plan::MAX_TENSOR_ELEMENTS) {
            return Err(Error::tensor(&t, format!("shape {:?} exceeds the per-tensor limit of the reference forward", shape)));
        }
    }
    // Drop each intermediate after its last reader so deep nets fit in memory.
    let mut last_use: HashMap<&str, usize> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for t in &n.inputs {
            last_use.insert(t, i);
        }
    }
    for (i, n) in g.nodes.iter().enumerate() {
        let ins: Vec<&Live> = n
            .inputs
            .iter()
            .map(|t| live.get(t).ok_or_else(|| Error::Graph(format!("node `{}` reads `{}` before it exists", n.name, t))))
            .collect::<Result<_>>()?;
        let xs: Vec<&Tensor> = ins.iter().map(|l| &l.0).collect();
        let out = run_node(n, &xs, weights)?;
        let scale = if track {
            let s2: Vec<&Tensor> = ins.iter().map(|l| l.1.as_ref().expect("tracked")).collect();
            Some(n.op.def().error_scale_sq(&super::ErrorScaleArgs { n, x: &xs, s2: &s2, y: &out, w: weights })?)
        } else {
            None
        };
        for t in &n.inputs {
            if last_use.get(t.as_str()) == Some(&i) && !g.outputs.contains(t) {
                live.remove(t);
            }
        }
        live.insert(n.outputs[0].clone(), (out, scale));
    }
    g.outputs.iter().map(|o| live.get(o).cloned().map(|t| (o.clone(), t)).ok_or_else(|| Error::Graph(format!("output `{}` was not computed", o)))).collect()
}

/// One node of the reference forward (see `OpDef::forward_cpu`).
fn run_node(n: &Node, ins: &[&Tensor], w: &Weights) -> Result<Tensor> {
    n.op.def().forward_cpu(n, ins, w)
}

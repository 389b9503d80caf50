//! The network IR: a DAG of nodes over named tensors, with parameter shapes.

mod index;
mod shape;
mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::ops::{Activation, AvgPool2d, BatchNorm, Conv2d, Linear, Op, Opaque, ParamShapes, ShapeHint, WrittenAs};
pub use index::GraphIndex;
pub use shape::infer_node;
pub use shape::{infer_shapes, infer_shapes_seeded, node_flops, window_out, Shapes};

/// Output length of a conv axis (no ceil mode).
pub fn infer_out(input: usize, kernel: usize, stride: usize, pad_total: usize, dilation: usize) -> Option<usize> {
    window_out(input, kernel, stride, pad_total, dilation, false)
}

/// One op applied to named input tensors, producing named outputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique node name; reports and errors use it.
    pub name: String,
    /// What the node computes.
    pub op: Op,
    /// Names of the activation tensors it reads (parameters are named in `op`).
    pub inputs: Vec<String>,
    /// Names of the tensors it produces.
    pub outputs: Vec<String>,
}

/// A graph input: its name and full shape (N, C, H, W or N, F).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValueInfo {
    /// Tensor name.
    pub name: String,
    /// Full shape, batch first.
    pub shape: Vec<usize>,
}

/// A network: nodes over named tensors, with parameter shapes but no weights.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Graph inputs, with shapes.
    pub inputs: Vec<ValueInfo>,
    /// Names of the tensors the graph returns.
    pub outputs: Vec<String>,
    /// Nodes in topological order (validation checks it).
    pub nodes: Vec<Node>,
    /// Shape of every parameter tensor an op names.
    pub params: ParamShapes,
    /// Shapes of carried nodes' outputs that a shape analysis of the source file
    /// proved (the ONNX engine's), for tensors repfuse's own inference cannot follow
    /// (past attention, reshapes, state-space mixers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub known_shapes: BTreeMap<String, Vec<usize>>,
}

impl Graph {
    /// Count of nodes per op kind, for before/after reports.
    pub fn op_histogram(&self) -> BTreeMap<String, usize> {
        // Counted under borrowed kind names: one String per kind, not per node.
        let mut h: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &self.nodes {
            *h.entry(n.op.kind()).or_insert(0) += 1;
        }
        h.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Number of nodes whose [`Op::kind`] is `kind` (e.g. `"Conv"`).
    pub fn count(&self, kind: &str) -> usize {
        self.nodes.iter().filter(|n| n.op.kind() == kind).count()
    }

    /// Number of parameter values the ops reference (each name counted once).
    pub fn param_count(&self) -> usize {
        // Each name counted once by its position in `params` (one lookup per use, no
        // set of names built: that was 3% of MobileOne-S0's rewrite); names not in
        // `params` count 0, as before.
        let mut seen = vec![false; self.params.len()];
        let mut total = 0usize;
        for p in self.nodes.iter().flat_map(|n| n.op.params()) {
            let Some((i, _, shape)) = self.params.get_full(p) else { continue };
            if !std::mem::replace(&mut seen[i], true) {
                total = total.saturating_add(shape.iter().fold(1usize, |a, &b| a.saturating_mul(b)));
            }
        }
        total
    }

    /// Graph inputs plus node outputs: the tensors a shape map or a set of defined
    /// names will hold, so they can be sized once.
    pub fn tensor_count(&self) -> usize {
        self.inputs.len() + self.nodes.iter().map(|n| n.outputs.len()).sum::<usize>()
    }

    /// The node named `name`, by linear search.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Checks structure and shapes; see `validate.rs`.
    pub fn validate(&self) -> crate::Result<Shapes> {
        validate::validate(self)
    }

    /// Reorders nodes topologically (stable for already-ordered graphs).
    pub fn sort_topologically(&mut self) -> crate::Result<()> {
        validate::sort_topologically(self)
    }

    /// Multiply-accumulate count x2 per sample, from inferred shapes.
    pub fn flops(&self, shapes: &Shapes) -> u64 {
        self.nodes.iter().map(|n| shape::node_flops(n, shapes)).fold(0u64, u64::saturating_add)
    }
}

//! Checks the op files share: input counts, ranks, channel counts, parameter shapes.
//! Each error names the node and the field at fault.

use super::ParamShapes;
use crate::error::{Error, Result};
use crate::graph::Node;

/// The node reads exactly `k` data inputs.
pub fn inputs(n: &Node, k: usize) -> Result<()> {
    if n.inputs.len() == k {
        Ok(())
    } else {
        Err(Error::shape(&n.name, "inputs", format!("{} takes {} input(s), got {}", n.op.kind(), k, n.inputs.len())))
    }
}

/// The node reads at least one data input.
pub fn some_inputs(n: &Node) -> Result<()> {
    if n.inputs.is_empty() {
        Err(Error::shape(&n.name, "inputs", "needs at least one input"))
    } else {
        Ok(())
    }
}

/// Every value of `field` is positive.
pub fn positive(n: &Node, field: &str, vals: &[usize]) -> Result<()> {
    if vals.iter().all(|&v| v > 0) {
        Ok(())
    } else {
        Err(Error::shape(&n.name, field, format!("must be positive, got {:?}", vals)))
    }
}

/// Parameter `name` exists with exactly `shape`.
pub fn param(n: &Node, params: &ParamShapes, field: &str, name: &str, shape: &[usize]) -> Result<()> {
    match params.get(name) {
        None => Err(Error::shape(&n.name, field, format!("parameter `{}` is missing", name))),
        Some(s) if s.as_slice() != shape => Err(Error::shape(&n.name, field, format!("parameter `{}` has shape {:?}, op expects {:?}", name, s, shape))),
        Some(_) => Ok(()),
    }
}

/// Input shape `s` has one of `ranks`.
pub fn rank(n: &Node, s: &[usize], ranks: &[usize]) -> Result<()> {
    if ranks.contains(&s.len()) {
        Ok(())
    } else {
        Err(Error::shape(&n.name, "input", format!("expected rank {:?}, got shape {:?}", ranks, s)))
    }
}

/// Input shape `s` has `c` channels (axis 1).
pub fn channels(n: &Node, s: &[usize], c: usize) -> Result<()> {
    if s[1] == c {
        Ok(())
    } else {
        Err(Error::shape(&n.name, "channels", format!("op expects {} input channels, input has shape {:?}", c, s)))
    }
}

/// The first input's shape; an op of known kind always has one.
pub fn first<'a>(n: &Node, ins: &[&'a Vec<usize>]) -> Result<&'a Vec<usize>> {
    ins.first().copied().ok_or_else(|| Error::shape(&n.name, "inputs", "node has no inputs"))
}

/// `[N, C, H, W]` of a 4-D tensor, or an error naming the node.
pub fn dims4(node: &str, s: &[usize]) -> Result<[usize; 4]> {
    match *s {
        [a, b, c, d] => Ok([a, b, c, d]),
        ref s => Err(Error::shape(node, "input", format!("expected NCHW, got {:?}", s))),
    }
}

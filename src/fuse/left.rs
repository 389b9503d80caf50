//! Why each batch norm, branch sum and concat left in a deploy graph is still there:
//! the refusal that kept it, or the pattern no rule matches. A user who sees a BN
//! survive should not have to read the graph to learn why.

use std::collections::BTreeSet;

use super::report::{Left, Refusal};
use crate::graph::{Graph, GraphIndex, Op};

/// What produces `t`, in words: an op kind, a parameter, or the graph input.
fn source(g: &Graph, index: &GraphIndex, t: &str) -> String {
    match index.producer(t) {
        Some(p) => g.nodes[p].op.kind().to_string(),
        None if g.params.contains_key(t) => "a constant".into(),
        None => "a graph input".into(),
    }
}

/// The carried (opaque) nodes of `g`, grouped by op type and reason.
pub fn carried(g: &Graph) -> Vec<super::report::Carried> {
    let mut groups: std::collections::BTreeMap<(&str, &str), usize> = std::collections::BTreeMap::new();
    for n in &g.nodes {
        if let Op::Opaque(o) = &n.op {
            *groups.entry((o.op_type.as_str(), o.why.as_deref().unwrap_or("built as an opaque node"))).or_default() += 1;
        }
    }
    groups.into_iter().map(|((op_type, why), count)| super::report::Carried { op_type: op_type.to_string(), count, why: why.to_string() }).collect()
}

/// One entry per BN, Add of computed tensors, or Concat of `g`.
pub fn explain(g: &Graph, refusals: &[Refusal]) -> Vec<Left> {
    let index = GraphIndex::new(g);
    let refused: BTreeSet<&str> = refusals.iter().flat_map(|r| r.nodes.iter().map(String::as_str)).collect();
    let mut out = vec![];
    for n in &g.nodes {
        let (op, pattern) = match &n.op {
            Op::BatchNorm(b) => {
                let kind = if b.written_as.is_some() { "BatchNorm (stand-in for a constant Mul/Add/Sub/Div)" } else { "BatchNorm" };
                let readers: Vec<String> = index.consumers(&n.outputs[0]).iter().map(|&c| g.nodes[c].op.kind().to_string()).collect();
                let before = source(g, &index, &n.inputs[0]);
                let why = match index.producer(&n.inputs[0]).map(|p| &g.nodes[p].op) {
                    Some(Op::Conv2d(_)) | Some(Op::Linear(_)) => format!("after a {} whose output has other readers", before),
                    _ => format!(
                        "after {} (no conv or linear layer to fold into before it), read by {:?} (none a conv without padding to fold into)",
                        before, readers
                    ),
                };
                (kind.to_string(), why)
            }
            Op::Add => {
                let ins: Vec<String> = n.inputs.iter().map(|t| source(g, &index, t)).collect();
                (
                    "Add".to_string(),
                    format!(
                        "a sum of {:?}: no two of its inputs are convs reading one tensor (a residual across non-linear ops, or branches on different tensors)",
                        ins
                    ),
                )
            }
            Op::Concat => {
                let ins: Vec<String> = n.inputs.iter().map(|t| source(g, &index, t)).collect();
                ("Concat".to_string(), format!("a concat of {:?}: its inputs are not convs reading one tensor", ins))
            }
            _ => continue,
        };
        let why = if refused.contains(n.name.as_str()) {
            let r: Vec<String> = refusals.iter().filter(|r| r.nodes.contains(&n.name)).map(|r| format!("refused by {}: {}", r.rule, r.reason)).collect();
            r.join("; ")
        } else {
            format!("no rule matches: {}", pattern)
        };
        out.push(Left { node: n.name.clone(), op, why });
    }
    out
}

//! Structural validation: names, order, cycles, parameter shapes, op attributes.
//! Runs on every graph a user hands us and after every rewrite patch.

use foldhash::{HashMap, HashSet, HashSetExt};

use super::{infer_shapes, Graph, Node, Shapes};
use crate::error::{Error, Result};

pub fn validate(g: &Graph) -> Result<Shapes> {
    check_names_and_order(g)?;
    for n in &g.nodes {
        check_op(n, &g.params)?;
    }
    infer_shapes(g)
}

fn check_names_and_order(g: &Graph) -> Result<()> {
    // Sized up front: growing a set of 10^5 names rehashes it ~17 times, and each
    // large reallocation makes glibc consolidate its free lists (see end-to-end.md).
    let tensors = g.tensor_count();
    let mut node_names = HashSet::with_capacity(g.nodes.len());
    let mut defined: HashSet<&str> = HashSet::with_capacity(tensors);
    for v in &g.inputs {
        if !defined.insert(&v.name) {
            return Err(Error::Graph(format!("graph input `{}` is declared twice", v.name)));
        }
        if v.shape.contains(&0) {
            return Err(Error::shape(&v.name, "shape", format!("graph input has a zero dimension: {:?}", v.shape)));
        }
    }
    let mut producers: HashSet<&str> = HashSet::with_capacity(tensors);
    producers.extend(g.nodes.iter().flat_map(|n| n.outputs.iter().map(String::as_str)));
    for n in &g.nodes {
        if !node_names.insert(&n.name) {
            return Err(Error::Graph(format!("node name `{}` is used twice", n.name)));
        }
        for t in &n.inputs {
            if !defined.contains(t.as_str()) && !g.params.contains_key(t) {
                return Err(if producers.contains(t.as_str()) {
                    Error::Graph(format!("node `{}` reads `{}` before it is produced (cycle or unsorted nodes)", n.name, t))
                } else {
                    Error::Graph(format!("node `{}` reads `{}`, which nothing produces (dangling input)", n.name, t))
                });
            }
        }
        if n.outputs.is_empty() {
            return Err(Error::shape(&n.name, "outputs", "node has no outputs"));
        }
        for o in &n.outputs {
            if !defined.insert(o) || g.params.contains_key(o) {
                return Err(Error::Graph(format!("tensor `{}` is produced twice (node `{}`)", o, n.name)));
            }
        }
    }
    for o in &g.outputs {
        if !defined.contains(o.as_str()) {
            return Err(Error::Graph(format!("graph output `{}` is not produced by any node", o)));
        }
    }
    Ok(())
}

fn check_op(n: &Node, params: &super::ParamShapes) -> Result<()> {
    n.op.def().check(n, params)
}

/// Kahn's algorithm, taking ready nodes in their current order so sorted graphs keep
/// their order.
pub fn sort_topologically(g: &mut Graph) -> Result<()> {
    let producer: HashMap<&str, usize> = g.nodes.iter().enumerate().flat_map(|(i, n)| n.outputs.iter().map(move |o| (o.as_str(), i))).collect();
    let n = g.nodes.len();
    let mut indeg = vec![0usize; n];
    let mut users: Vec<Vec<usize>> = vec![vec![]; n];
    for (i, node) in g.nodes.iter().enumerate() {
        let deps: HashSet<usize> = node.inputs.iter().filter_map(|t| producer.get(t.as_str()).copied()).collect();
        indeg[i] = deps.len();
        for d in deps {
            users[d].push(i);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() != n {
        let stuck: Vec<&str> = (0..n).filter(|&i| indeg[i] > 0).map(|i| g.nodes[i].name.as_str()).take(5).collect();
        return Err(Error::Graph(format!("cycle through nodes {:?}", stuck)));
    }
    let mut old: Vec<Option<Node>> = std::mem::take(&mut g.nodes).into_iter().map(Some).collect();
    g.nodes = order.into_iter().map(|i| old[i].take().expect("each index once")).collect();
    Ok(())
}

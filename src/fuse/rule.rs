//! What a rule sees and what it returns. A rule looks at one node and returns a
//! `Patch` or nothing, leaving early when it does not apply (tract's style).

use std::collections::BTreeSet;

use super::report::Refusal;
use crate::graph::{Graph, GraphIndex, Node, Shapes};
use crate::plan::Step;

/// A local rewrite: nodes out, nodes in, and the weight arithmetic that makes the new
/// nodes' parameters.
#[derive(Debug, Default)]
pub struct Patch {
    pub remove: Vec<usize>,
    pub add: Vec<Node>,
    pub params: Vec<(String, Vec<usize>)>,
    pub steps: Vec<Step>,
    /// Human summary: which rule, what it consumed, what it produced.
    pub rule: &'static str,
    pub into: String,
}

/// Read-only view of the graph plus the two things a rule may write: fresh names and
/// refusals.
pub struct Ctx<'a> {
    pub graph: &'a Graph,
    /// Producers and consumers; rules ask for consumers through [`Ctx::consumers`]
    /// and [`Ctx::sole_consumer`], which note the tensor (see `queried`).
    pub(super) index: &'a GraphIndex<'a>,
    /// Tensors whose consumers the current rule call asked about: its decision
    /// depends on who reads them, so no other patch of the wave may change that.
    pub(super) queried: std::cell::RefCell<Vec<u64>>,
    pub shapes: &'a Shapes,
    pub counter: &'a mut usize,
    pub refusals: &'a mut Vec<Refusal>,
    pub seen_refusals: &'a mut BTreeSet<(String, Vec<String>)>,
    pub compose_cost_limit: f64,
    pub widen_shortcuts: bool,
}

impl Ctx<'_> {
    /// A parameter or tensor name no source model uses.
    pub fn fresh(&mut self, base: &str, what: &str) -> String {
        use std::fmt::Write;
        *self.counter += 1;
        // Built in place: `format!` with three arguments cost ~1,500 instructions,
        // and every patch names two or more parameters.
        let mut name = String::with_capacity(base.len() + what.len() + 16);
        name.push_str(base);
        name.push_str(".repfuse");
        write!(name, "{}", self.counter).expect("writing to a String cannot fail");
        name.push('.');
        name.push_str(what);
        name
    }

    /// Records that `rule` would have rewritten `nodes` but that would not be exact.
    pub fn refuse(&mut self, rule: &str, nodes: &[&str], reason: String) {
        let names: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
        if self.seen_refusals.insert((rule.to_string(), names.clone())) {
            self.refusals.push(Refusal { rule: rule.to_string(), nodes: names, reason });
        }
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.graph.nodes[i]
    }

    pub fn producer(&self, tensor: &str) -> Option<usize> {
        self.index.producer(tensor)
    }

    /// Nodes reading `tensor` (noted: the patch's decision now depends on them).
    pub fn consumers(&self, tensor: &str) -> &[usize] {
        self.queried.borrow_mut().push(tensor_key(tensor));
        self.index.consumers(tensor)
    }

    /// The one node reading `tensor`, graph outputs included (noted, as `consumers`).
    pub fn sole_consumer(&self, tensor: &str) -> Option<usize> {
        self.queried.borrow_mut().push(tensor_key(tensor));
        self.index.sole_consumer(tensor)
    }

    /// Channel count of a tensor, when its shape is known.
    pub fn channels(&self, tensor: &str) -> Option<usize> {
        self.shapes.get(tensor).and_then(|s| s.get(1).copied())
    }
}

/// A tensor name remembered by hash while a wave is assembled: a collision can only
/// make two independent patches look dependent, which defers one to the next wave,
/// never the reverse.
pub fn tensor_key(t: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x5eed).hash_one(t)
}

pub type Rule = fn(&mut Ctx, usize) -> Option<Patch>;

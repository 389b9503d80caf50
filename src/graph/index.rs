//! Producer/consumer lookups the rewrite rules need, rebuilt after every patch.

use std::collections::{HashMap, HashSet};

use super::Graph;

/// Which node produces and which nodes consume each tensor of a graph.
pub struct GraphIndex {
    producer: HashMap<String, usize>,
    consumers: HashMap<String, Vec<usize>>,
    outputs: HashSet<String>,
}

impl GraphIndex {
    /// Indexes `g`; node numbers are positions in `g.nodes`.
    pub fn new(g: &Graph) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, n) in g.nodes.iter().enumerate() {
            for o in &n.outputs {
                producer.insert(o.clone(), i);
            }
            for t in &n.inputs {
                let c = consumers.entry(t.clone()).or_default();
                if !c.contains(&i) {
                    c.push(i);
                }
            }
        }
        GraphIndex { producer, consumers, outputs: g.outputs.iter().cloned().collect() }
    }

    /// The node writing `tensor`; `None` for graph inputs and parameters.
    pub fn producer(&self, tensor: &str) -> Option<usize> {
        self.producer.get(tensor).copied()
    }

    /// Nodes reading `tensor`, each once, in graph order; empty if none.
    pub fn consumers(&self, tensor: &str) -> &[usize] {
        self.consumers.get(tensor).map_or(&[], |v| v.as_slice())
    }

    /// `tensor` is returned by the graph, so its producer must stay.
    pub fn is_graph_output(&self, tensor: &str) -> bool {
        self.outputs.contains(tensor)
    }

    /// The one node reading `tensor`, when nothing else (graph outputs included) does:
    /// the condition for fusing the producer away.
    pub fn sole_consumer(&self, tensor: &str) -> Option<usize> {
        match self.consumers(tensor) {
            [only] if !self.is_graph_output(tensor) => Some(*only),
            _ => None,
        }
    }
}

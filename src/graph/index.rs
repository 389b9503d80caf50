//! Producer/consumer lookups the rewrite rules need, rebuilt after every patch.

use foldhash::{HashMap, HashMapExt, HashSet};

use super::Graph;

/// Which node produces and which nodes consume each tensor of a graph. Keys borrow
/// the graph's names: the index is rebuilt every rewrite wave, and copying every
/// name each time was most of its cost on large graphs.
pub struct GraphIndex<'g> {
    producer: HashMap<&'g str, usize>,
    consumers: HashMap<&'g str, Vec<usize>>,
    outputs: HashSet<&'g str>,
}

impl<'g> GraphIndex<'g> {
    /// Indexes `g`; node numbers are positions in `g.nodes`.
    pub fn new(g: &'g Graph) -> Self {
        let mut producer = HashMap::with_capacity(g.nodes.len());
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::with_capacity(g.nodes.len());
        for (i, n) in g.nodes.iter().enumerate() {
            for o in &n.outputs {
                producer.insert(o.as_str(), i);
            }
            for t in &n.inputs {
                let c = consumers.entry(t.as_str()).or_default();
                if !c.contains(&i) {
                    c.push(i);
                }
            }
        }
        GraphIndex { producer, consumers, outputs: g.outputs.iter().map(String::as_str).collect() }
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

//! Producer/consumer lookups the rewrite rules need, rebuilt after every patch.

use foldhash::{HashMap, HashMapExt, HashSet};

use super::Graph;

/// No node produces the tensor (a graph input or a parameter).
const NONE: usize = usize::MAX;

/// Which node produces and which nodes consume each tensor of a graph. Keys borrow
/// the graph's names: the index is rebuilt every rewrite wave, and copying every
/// name each time was most of its cost on large graphs. Each tensor gets a dense
/// number once; producers and consumers are arrays by that number (consumers in one
/// flat array with offsets), so a rebuild makes five allocations, not one per tensor.
pub struct GraphIndex<'g> {
    id: HashMap<&'g str, u32>,
    producer: Vec<usize>,
    /// Consumers of tensor `t`: `consumers[start[t]..start[t + 1]]`.
    start: Vec<u32>,
    consumers: Vec<usize>,
    outputs: HashSet<&'g str>,
}

impl<'g> GraphIndex<'g> {
    /// Indexes `g`; node numbers are positions in `g.nodes`.
    pub fn new(g: &'g Graph) -> Self {
        let mut id: HashMap<&str, u32> = HashMap::with_capacity(2 * g.nodes.len());
        let mut producer = Vec::with_capacity(2 * g.nodes.len());
        // (tensor, reader) pairs in graph order, each reader once per tensor.
        let mut reads: Vec<(u32, usize)> = Vec::with_capacity(2 * g.nodes.len());
        let mut number = |t: &'g str, producer: &mut Vec<usize>| {
            let next = id.len() as u32;
            let k = *id.entry(t).or_insert(next);
            if k == next {
                producer.push(NONE);
            }
            k
        };
        for (i, n) in g.nodes.iter().enumerate() {
            let first_read = reads.len();
            for t in &n.inputs {
                let k = number(t, &mut producer);
                if !reads[first_read..].iter().any(|&(r, _)| r == k) {
                    reads.push((k, i));
                }
            }
            for o in &n.outputs {
                let k = number(o, &mut producer);
                producer[k as usize] = i;
            }
        }
        // Counting sort of the reads by tensor; stable, so readers stay in graph order.
        let mut start = vec![0u32; producer.len() + 1];
        for &(k, _) in &reads {
            start[k as usize + 1] += 1;
        }
        for t in 0..producer.len() {
            start[t + 1] += start[t];
        }
        let mut fill = start.clone();
        let mut consumers = vec![0usize; reads.len()];
        for (k, i) in reads {
            consumers[fill[k as usize] as usize] = i;
            fill[k as usize] += 1;
        }
        GraphIndex { id, producer, start, consumers, outputs: g.outputs.iter().map(String::as_str).collect() }
    }

    /// The node writing `tensor`; `None` for graph inputs and parameters.
    pub fn producer(&self, tensor: &str) -> Option<usize> {
        let k = *self.id.get(tensor)?;
        Some(self.producer[k as usize]).filter(|&p| p != NONE)
    }

    /// Nodes reading `tensor`, each once, in graph order; empty if none.
    pub fn consumers(&self, tensor: &str) -> &[usize] {
        match self.id.get(tensor) {
            Some(&k) => &self.consumers[self.start[k as usize] as usize..self.start[k as usize + 1] as usize],
            None => &[],
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Node, Op};

    fn node(name: &str, inputs: &[&str], outputs: &[&str]) -> Node {
        Node {
            name: name.into(),
            op: Op::Add,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn producers_and_consumers_in_graph_order_each_reader_once() {
        let g = Graph {
            nodes: vec![node("a", &["x"], &["t"]), node("b", &["t", "t"], &["u"]), node("c", &["x", "t"], &["v", "w"]), node("d", &["u", "v"], &["y"])],
            outputs: vec!["y".into(), "w".into()],
            ..Default::default()
        };
        let ix = GraphIndex::new(&g);
        assert_eq!(ix.producer("x"), None);
        assert_eq!((ix.producer("t"), ix.producer("w"), ix.producer("y")), (Some(0), Some(2), Some(3)));
        assert_eq!(ix.consumers("x"), &[0, 2]);
        assert_eq!(ix.consumers("t"), &[1, 2]);
        assert_eq!(ix.consumers("y"), &[] as &[usize]);
        assert_eq!(ix.consumers("missing"), &[] as &[usize]);
        assert_eq!(ix.sole_consumer("u"), Some(3));
        assert_eq!(ix.sole_consumer("t"), None);
        assert!(ix.is_graph_output("w") && !ix.is_graph_output("v"));
    }
}

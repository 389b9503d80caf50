//! Which original nodes each node a rewrite makes stands for (the region
//! `verify::check_regions` runs alone). Kept as positions in the source graph, not as
//! names: every wave unions its removed nodes' origins for each new node, and sets of
//! copied names made that a twentieth of MobileOne's rewrite.

use std::collections::BTreeMap;
use std::rc::Rc;

use foldhash::{HashMap, HashMapExt};

use crate::graph::Graph;

/// Origins of the nodes made so far; a node without an entry stands for itself.
pub struct Origins<'g> {
    source: &'g Graph,
    position: HashMap<&'g str, u32>,
    made: HashMap<String, Rc<[u32]>>,
}

impl<'g> Origins<'g> {
    /// No node made yet; `source` is the graph the rewrite started from.
    pub fn new(source: &'g Graph) -> Self {
        let position = source.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i as u32)).collect();
        Origins { source, position, made: HashMap::new() }
    }

    /// The original nodes that the nodes named `removed` stand for together, sorted.
    pub fn union<'a>(&self, removed: impl IntoIterator<Item = &'a str>) -> Rc<[u32]> {
        let mut ids: Vec<u32> = vec![];
        for name in removed {
            match self.made.get(name) {
                Some(o) => ids.extend_from_slice(o),
                None => ids.extend(self.position.get(name).copied()),
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids.into()
    }

    /// The name of original node `i` (a position `union` returns).
    pub fn source_name(&self, i: u32) -> &'g str {
        &self.source.nodes[i as usize].name
    }

    /// The node named `made` stands for `origin`.
    pub fn record(&mut self, made: &str, origin: Rc<[u32]>) {
        self.made.insert(made.to_string(), origin);
    }

    /// For each node of `deploy` that stands for more than itself: the names of the
    /// original nodes it replaces, sorted.
    pub fn into_names(self, deploy: &Graph) -> BTreeMap<String, Vec<String>> {
        let name = |i: &u32| self.source.nodes[*i as usize].name.clone();
        deploy
            .nodes
            .iter()
            .filter_map(|n| {
                let o = self.made.get(&n.name)?;
                let only_itself = matches!(&o[..], [i] if self.source.nodes[*i as usize].name == n.name);
                if only_itself {
                    return None;
                }
                let mut names: Vec<String> = o.iter().map(name).collect();
                names.sort();
                Some((n.name.clone(), names))
            })
            .collect()
    }
}

//! Applying a wave of independent patches in time proportional to the wave, not the
//! graph: the checks `Graph::validate` makes of a whole graph, made of what changed
//! (new nodes, removed tensors), with the previous wave's index and shapes. Nodes go
//! in where their patch's last removed node was, which keeps the order topological
//! for every rule's region (its sink is its last node); a wave that would not is
//! re-sorted whole. `fuse` validates the whole result once at the end, and checks
//! there that the shapes kept here equal a full inference.

use std::borrow::Cow;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::rule::{tensor_key, Patch};
use crate::error::{Error, Result};
use crate::graph::{Graph, GraphIndex, Node, Shapes};

/// Where a wave's new nodes go and what it removes, checked against the graph
/// before the wave (see `check_wave`).
pub struct Layout {
    /// Old position of each patch's last removed node -> that patch's number.
    insert_at: HashMap<usize, usize>,
    /// Removed node positions.
    removed: Vec<bool>,
    /// Tensors the wave stops producing.
    dropped: Vec<String>,
    /// The positions do not give a topological order: sort the graph.
    needs_sort: bool,
}

/// The node names of a graph as 64-bit hashes with counts, kept up to date wave by
/// wave: holding the names themselves cost a copy of every name a wave adds and a free
/// of every one it removes, with long-string compares on every lookup (6% of
/// MobileOne-S0's rewrite). A hash found is confirmed against the graph's own names
/// before it is called a clash, so a collision costs a scan, never a wrong answer.
pub struct NodeNames(HashMap<u64, u32>);

impl NodeNames {
    /// The names of `g`'s nodes.
    pub fn new(g: &Graph) -> Self {
        let mut names = NodeNames(HashMap::with_capacity(g.nodes.len()));
        g.nodes.iter().for_each(|n| names.add(&n.name));
        names
    }

    fn add(&mut self, name: &str) {
        *self.0.entry(tensor_key(name)).or_insert(0) += 1;
    }

    fn remove(&mut self, name: &str) {
        let key = tensor_key(name);
        if let Some(c) = self.0.get_mut(&key) {
            *c -= 1;
            if *c == 0 {
                self.0.remove(&key);
            }
        }
    }

    /// A node of `g` that stays (not `removed`) is named `name`.
    fn kept_node_named(&self, g: &Graph, removed: &[bool], name: &str) -> bool {
        self.0.contains_key(&tensor_key(name)) && g.nodes.iter().enumerate().any(|(i, n)| !removed[i] && n.name == name)
    }
}

/// Checks that `wave` keeps `g` well formed (every read tensor produced, none twice,
/// no reader left without its tensor, names unique) and lays it out. `names`: the
/// node names of `g`, kept up to date by `commit`.
pub fn check_wave(g: &Graph, index: &GraphIndex, wave: &[Patch], names: &NodeNames, rule: &str) -> Result<Layout> {
    let bad = |why: String| Error::Graph(format!("rule `{}` produced an invalid graph: {}", rule, why));
    let mut removed = vec![false; g.nodes.len()];
    for p in wave {
        p.remove.iter().for_each(|&i| removed[i] = true);
    }
    let removed_names: HashSet<&str> = wave.iter().flat_map(|p| p.remove.iter().map(|&i| g.nodes[i].name.as_str())).collect();
    let graph_inputs: HashSet<&str> = g.inputs.iter().map(|v| v.name.as_str()).collect();
    // Each new tensor, and the patch and place of the node producing it.
    let mut new_out: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut new_names: HashSet<&str> = HashSet::new();
    let mut insert_at = HashMap::new();
    let mut needs_sort = false;
    for (k, p) in wave.iter().enumerate() {
        let last = *p.remove.iter().max().ok_or_else(|| bad("a patch removes no node".into()))?;
        insert_at.insert(last, k);
        for (j, n) in p.add.iter().enumerate() {
            // A removed node's name is free again (names in `g` are unique, so no kept
            // node has it); any other name is asked of the kept nodes.
            if !new_names.insert(&n.name) || (!removed_names.contains(n.name.as_str()) && names.kept_node_named(g, &removed, &n.name)) {
                return Err(bad(format!("node name `{}` is used twice", n.name)));
            }
            if n.outputs.is_empty() {
                return Err(Error::shape(&n.name, "outputs", "node has no outputs"));
            }
            for o in &n.outputs {
                let old = index.producer(o).filter(|&q| !removed[q]);
                if old.is_some() || new_out.insert(o, (k, j)).is_some() || graph_inputs.contains(o.as_str()) {
                    return Err(bad(format!("tensor `{}` is produced twice (node `{}`)", o, n.name)));
                }
            }
        }
    }
    let params_added: HashSet<&str> = wave.iter().flat_map(|p| p.params.iter().map(|(n, _)| n.as_str())).collect();
    let position = |k: usize| wave[k].remove.iter().max().copied().unwrap_or(0);
    for (k, p) in wave.iter().enumerate() {
        let at = position(k);
        for (j, n) in p.add.iter().enumerate() {
            for t in &n.inputs {
                if g.params.contains_key(t) || params_added.contains(t.as_str()) || graph_inputs.contains(t.as_str()) {
                    continue;
                }
                match (new_out.get(t.as_str()), index.producer(t)) {
                    // Made earlier in the same patch, or by a patch placed before.
                    (Some(&(k2, j2)), _) => needs_sort |= !((k2 == k && j2 < j) || (k2 != k && position(k2) < at)),
                    (None, Some(q)) if !removed[q] => needs_sort |= q >= at,
                    _ => return Err(bad(format!("node `{}` reads `{}`, which nothing produces (dangling input)", n.name, t))),
                }
            }
            for o in &n.outputs {
                for &c in index.consumers(o) {
                    needs_sort |= !removed[c] && c <= at;
                }
            }
        }
    }
    let mut dropped = vec![];
    for (i, n) in g.nodes.iter().enumerate().filter(|(i, _)| removed[*i]) {
        for o in n.outputs.iter().filter(|o| !new_out.contains_key(o.as_str())) {
            if let Some(&c) = index.consumers(o).iter().find(|&&c| !removed[c]) {
                return Err(bad(format!("node `{}` reads `{}`, which the rewrite of `{}` removes", g.nodes[c].name, o, g.nodes[i].name)));
            }
            if index.is_graph_output(o) {
                return Err(bad(format!("graph output `{}` is not produced by any node", o)));
            }
            dropped.push(o.clone());
        }
    }
    Ok(Layout { insert_at, removed, dropped, needs_sort })
}

/// Puts the wave's nodes and parameters in place, keeps `names` and `shapes` up to
/// date, and checks each new node's attributes, parameters and output shape (a
/// rewritten region must give its outputs the shapes they had). A borrowed `g` (the
/// source graph, before the first wave) becomes owned here, copying only the nodes
/// the wave keeps. `spare` is an empty node vector kept between waves: the new order
/// is built in it and the old vector, emptied, becomes the next spare, so a wave
/// allocates no node array (on an 80,000-node graph a new 19 MB array each wave was
/// fresh pages for the kernel to fault in and zero).
#[allow(clippy::too_many_arguments)]
pub fn commit(
    g: &mut Cow<Graph>,
    spare: &mut Vec<Node>,
    wave_nodes: Vec<Vec<Node>>,
    params: Vec<(String, Vec<usize>)>,
    layout: Layout,
    names: &mut NodeNames,
    shapes: &mut Shapes,
    rule: &str,
) -> Result<()> {
    let Layout { insert_at, removed, dropped, needs_sort } = layout;
    let mut adds: Vec<Option<Vec<Node>>> = wave_nodes.into_iter().map(Some).collect();
    for (n, _) in g.nodes.iter().zip(&removed).filter(|(_, &r)| r) {
        names.remove(&n.name);
    }
    // Positions of the new nodes in the new order, ascending.
    let mut added: Vec<usize> = vec![];
    let mut nodes = std::mem::take(spare);
    nodes.clear();
    nodes.reserve(g.nodes.len() + adds.iter().flatten().map(Vec::len).sum::<usize>());
    // Each old node, kept (Some) or removed (None), followed by any patch placed after it.
    let mut place = |i: usize, kept: Option<Node>| {
        nodes.extend(kept);
        if let Some(&k) = insert_at.get(&i) {
            for a in adds[k].take().expect("one place per patch") {
                added.push(nodes.len());
                nodes.push(a);
            }
        }
    };
    let g: &mut Graph = match g {
        Cow::Borrowed(source) => {
            let source: &Graph = source;
            source.nodes.iter().enumerate().for_each(|(i, n)| place(i, (!removed[i]).then(|| n.clone())));
            let owned = Graph {
                inputs: source.inputs.clone(),
                outputs: source.outputs.clone(),
                nodes: vec![],
                params: source.params.clone(),
                known_shapes: source.known_shapes.clone(),
            };
            *g = Cow::Owned(owned);
            g.to_mut()
        }
        Cow::Owned(owned) => {
            owned.nodes.drain(..).enumerate().for_each(|(i, n)| place(i, (!removed[i]).then_some(n)));
            owned
        }
    };
    *spare = std::mem::replace(&mut g.nodes, nodes);
    g.params.extend(params);
    added.iter().for_each(|&i| names.add(&g.nodes[i].name));
    if needs_sort {
        // The sort moves nodes: find the new ones again by name.
        let new: HashSet<String> = added.iter().map(|&i| g.nodes[i].name.clone()).collect();
        g.sort_topologically()?;
        added = g.nodes.iter().enumerate().filter(|(_, n)| new.contains(&n.name)).map(|(i, _)| i).collect();
    }
    for t in &dropped {
        shapes.remove(t);
    }
    // New nodes in graph order, so each one's inputs have their shapes.
    for n in added.iter().map(|&i| &g.nodes[i]) {
        let def = n.op.def();
        def.check(n, &g.params).map_err(|e| Error::Graph(format!("rule `{}` produced an invalid graph: {}", rule, e)))?;
        let ins: Option<Vec<&Vec<usize>>> = n.inputs.iter().map(|t| shapes.get(t).or_else(|| g.params.get(t))).collect();
        let Some(ins) = ins else { continue };
        let Some(out) = def.output_shape(n, &ins).map_err(|e| Error::Graph(format!("rule `{}` produced an invalid graph: {}", rule, e)))? else { continue };
        match shapes.get(&n.outputs[0]) {
            Some(before) if *before != out => {
                return Err(Error::Graph(format!("rule `{}` changed the shape of `{}` from {:?} to {:?} (node `{}`)", rule, n.outputs[0], before, out, n.name)))
            }
            Some(_) => {}
            None => {
                shapes.insert(n.outputs[0].clone(), out);
            }
        }
    }
    Ok(())
}

#[cfg(all(test, feature = "tools"))]
mod tests {
    use super::*;
    use crate::graph::Op;
    use crate::zoo::{ConvSpec, GraphBuilder};

    /// x -> conv -> bn -> relu (output).
    fn net() -> Graph {
        let mut b = GraphBuilder::new(3);
        let x = b.input("x", &[1, 4, 6, 6]);
        let t = b.conv_bn(&x, ConvSpec::same(5, 3, 1, 1));
        let y = b.relu(&t);
        b.output(&y);
        b.finish().0
    }

    /// The conv+BN pair replaced by one conv writing the BN's output, as
    /// `fold_bn_into_conv` does; `out_channels` of the new conv as given.
    fn fold(g: &Graph, out_channels: usize) -> Patch {
        let Op::Conv2d(c) = &g.nodes[0].op else { unreachable!() };
        let conv = crate::graph::Conv2d { weight: "w2".into(), bias: Some("b2".into()), out_channels, ..c.clone() };
        Patch {
            remove: vec![0, 1],
            add: vec![Node { name: g.nodes[0].name.clone(), op: Op::Conv2d(conv), inputs: g.nodes[0].inputs.clone(), outputs: g.nodes[1].outputs.clone() }],
            params: vec![("w2".into(), vec![out_channels, 4, 3, 3]), ("b2".into(), vec![out_channels])],
            ..Default::default()
        }
    }

    fn run(g: &mut Graph, wave: Vec<Patch>) -> Result<Shapes> {
        let mut shapes = crate::graph::infer_shapes(g)?;
        let mut names = NodeNames::new(g);
        let index = GraphIndex::new(g);
        let layout = check_wave(g, &index, &wave, &names, "test")?;
        let (mut nodes, mut params) = (vec![], vec![]);
        for p in wave {
            params.extend(p.params);
            nodes.push(p.add);
        }
        let mut cow = Cow::Borrowed(&*g);
        commit(&mut cow, &mut vec![], nodes, params, layout, &mut names, &mut shapes, "test")?;
        *g = cow.into_owned();
        Ok(shapes)
    }

    #[test]
    fn a_valid_wave_keeps_the_shapes_a_full_inference_gives() {
        let mut g = net();
        let p = fold(&g, 5);
        let shapes = run(&mut g, vec![p]).unwrap();
        assert_eq!(shapes, g.validate().unwrap());
        assert_eq!(g.nodes.len(), 2);
    }

    #[test]
    fn a_wave_that_changes_a_kept_tensors_shape_is_refused() {
        let mut g = net();
        let mut p = fold(&g, 5);
        // The new conv writes 7 channels to the BN output, which had 5.
        let Op::Conv2d(c) = &mut p.add[0].op else { unreachable!() };
        c.out_channels = 7;
        p.params = vec![("w2".into(), vec![7, 4, 3, 3]), ("b2".into(), vec![7])];
        let e = run(&mut g, vec![p]).unwrap_err().to_string();
        assert!(e.contains("changed the shape"), "{}", e);
    }

    #[test]
    fn a_wave_that_leaves_a_reader_without_its_tensor_is_refused() {
        let mut g = net();
        let mut p = fold(&g, 5);
        // The new conv writes a new tensor: the ReLU would read the BN output nobody makes.
        p.add[0].outputs = vec!["elsewhere".into()];
        let e = run(&mut g, vec![p]).unwrap_err().to_string();
        assert!(e.contains("which the rewrite of"), "{}", e);
    }

    #[test]
    fn a_wave_that_produces_a_tensor_twice_is_refused() {
        let mut g = net();
        let mut p = fold(&g, 5);
        // Only the BN goes; the new node writes the output of the conv, which stays.
        p.remove = vec![1];
        p.add[0].name = "another".into();
        p.add[0].outputs = vec![g.nodes[0].outputs[0].clone()];
        let e = run(&mut g, vec![p]).unwrap_err().to_string();
        assert!(e.contains("produced twice"), "{}", e);
    }

    #[test]
    fn a_new_node_named_like_a_kept_node_is_refused() {
        let mut g = net();
        let mut p = fold(&g, 5);
        // The conv and BN go; the new conv takes the name of the ReLU, which stays.
        p.add[0].name = g.nodes[2].name.clone();
        let e = run(&mut g, vec![p]).unwrap_err().to_string();
        assert!(e.contains("is used twice"), "{}", e);
    }

    #[test]
    fn node_names_follow_the_waves() {
        let g = net();
        let p = fold(&g, 5);
        let (conv, bn) = (g.nodes[0].name.clone(), g.nodes[1].name.clone());
        let mut names = NodeNames::new(&g);
        let index = GraphIndex::new(&g);
        let layout = check_wave(&g, &index, std::slice::from_ref(&p), &names, "test").unwrap();
        let mut shapes = crate::graph::infer_shapes(&g).unwrap();
        let mut cow = Cow::Borrowed(&g);
        commit(&mut cow, &mut vec![], vec![p.add], p.params, layout, &mut names, &mut shapes, "test").unwrap();
        let g = cow.into_owned();
        let none = vec![false; g.nodes.len()];
        // The new conv kept the old conv's name; the BN's name is gone.
        assert!(names.kept_node_named(&g, &none, &conv));
        assert!(!names.kept_node_named(&g, &none, &bn));
        assert!(!names.kept_node_named(&g, &[true, true], &conv));
    }

    #[test]
    fn a_new_node_placed_before_its_input_is_sorted_into_place() {
        // a = relu(x) at 0, b = relu(x) at 1, y = a + b at 2; the patch rewrites node 0
        // into a = relu(b), which must come after node 1.
        let mut bld = GraphBuilder::new(4);
        let x = bld.input("x", &[1, 4, 6, 6]);
        let a = bld.relu(&x);
        let b = bld.relu(&x);
        let y = bld.add(&[a.clone(), b.clone()]);
        bld.output(&y);
        let mut g = bld.finish().0;
        let relu = g.nodes[0].clone();
        let b_producer = g.nodes[1].name.clone();
        let p = Patch { remove: vec![0], add: vec![Node { name: "later".into(), inputs: vec![b], ..relu }], ..Default::default() };
        let index = GraphIndex::new(&g);
        let names = NodeNames::new(&g);
        assert!(check_wave(&g, &index, std::slice::from_ref(&p), &names, "test").unwrap().needs_sort);
        let shapes = run(&mut g, vec![p]).unwrap();
        assert_eq!(shapes, g.validate().unwrap());
        let pos = |name: &str| g.nodes.iter().position(|n| n.name == name).unwrap();
        assert!(pos("later") > pos(&b_producer), "{:?}", g.nodes.iter().map(|n| &n.name).collect::<Vec<_>>());
    }
}

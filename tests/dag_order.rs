//! The rewrite engine works on the graph, not on how it was written down: shuffled
//! branch order, shuffled (still topological) node order, nested blocks and a branch
//! tensor also read elsewhere all fuse to the same deploy form, exactly.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{rngs::StdRng, SeedableRng};
use repfuse::graph::Op;
use repfuse::verify::check_equivalence;
use repfuse::zoo::{blocks, ConvSpec, GraphBuilder};
use repfuse::{fuse, FuseOptions, Graph, Weights};

fn model() -> (Graph, Weights) {
    let mut b = GraphBuilder::new(5);
    let x = b.input("x", &[2, 6, 9, 9]);
    let y = blocks::dbb_block(&mut b, &x, 6, 3, 1);
    let y = blocks::repvgg_block(&mut b, &y, 6, 1, 2);
    // A nested block: a sum whose branches are themselves sums.
    let i1 = b.conv_bn(&y, ConvSpec::kernel_hw(6, 1, 3, 1));
    let i2 = b.conv_bn(&y, ConvSpec::kernel_hw(6, 3, 1, 1));
    let inner = b.add(&[i1, i2]);
    let z = b.conv_bn(&y, ConvSpec::same(6, 3, 1, 1));
    let outer = b.add(&[inner, z]);
    b.output(&outer);
    b.finish()
}

/// A random topological order: repeatedly pick a random ready node.
fn shuffle_nodes(g: &Graph, rng: &mut StdRng) -> Graph {
    let mut left = g.nodes.clone();
    let mut known: std::collections::HashSet<String> = g.inputs.iter().map(|i| i.name.clone()).collect();
    let mut out = vec![];
    while !left.is_empty() {
        let ready: Vec<usize> = (0..left.len()).filter(|&i| left[i].inputs.iter().all(|t| known.contains(t))).collect();
        let pick = *ready.choose(rng).unwrap();
        let n = left.remove(pick);
        known.extend(n.outputs.iter().cloned());
        out.push(n);
    }
    Graph { nodes: out, ..g.clone() }
}

#[test]
fn shuffled_branch_and_node_order_fuse_the_same_way() {
    let (g, w) = model();
    let base = fuse(&g, &FuseOptions::default()).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    for _ in 0..8 {
        let mut h = shuffle_nodes(&g, &mut rng);
        for n in &mut h.nodes {
            if matches!(n.op, Op::Add) {
                n.inputs.shuffle(&mut rng);
            }
        }
        let f = fuse(&h, &FuseOptions::default()).unwrap();
        assert_eq!(f.report.ops_after, base.report.ops_after);
        let fw = f.weights_cpu(&w).unwrap();
        assert!(check_equivalence(&h, &w, &f.graph, &fw, 3).unwrap().passed());
    }
    assert_eq!(base.graph.count("Conv"), 3);
}

#[test]
fn a_branch_read_elsewhere_stays_and_the_rest_still_merges() {
    let mut b = GraphBuilder::new(6);
    let x = b.input("x", &[1, 4, 7, 7]);
    let a = b.conv_bn(&x, ConvSpec::same(4, 3, 1, 1));
    let c = b.conv_bn(&x, ConvSpec::same(4, 1, 1, 1));
    let d = b.conv_bn(&x, ConvSpec::same(4, 1, 1, 1));
    let s = b.add(&[a, c.clone(), d]);
    let side = b.relu(&c); // `c` is also read here
    b.output(&s);
    b.output(&side);
    let (g, w) = b.finish();
    let f = fuse(&g, &FuseOptions::default()).unwrap();
    // a + d merge; c stays a separate conv read by the sum and the ReLU.
    assert_eq!(f.graph.count("Conv"), 2);
    assert_eq!(f.graph.count("Add"), 1);
    let fw = f.weights_cpu(&w).unwrap();
    assert!(check_equivalence(&g, &w, &f.graph, &fw, 1).unwrap().passed());
}

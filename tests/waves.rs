//! The rewrite runs a fixed number of waves whatever the size of the graph: patches
//! that only share a tensor they read (the parallel branches of one input) go in one
//! wave, and a chain of sums flattens in one patch. Each case is also run forward
//! against the training graph: batching patches must not change what they compute.

use repfuse::verify::check_equivalence;
use repfuse::zoo::{blocks, GraphBuilder};
use repfuse::{fuse, FuseOptions, Fusion, Graph, Weights};

/// `blocks` MobileOne blocks (4 conv+BN branches, a 1x1 branch and a BN identity,
/// summed by a chain of 5 Adds), then fused and checked forward.
fn mobileone_chain(blocks_n: usize) -> (Graph, Weights, Fusion) {
    let mut b = GraphBuilder::new(9);
    let mut x = b.input("x", &[1, 6, 7, 7]);
    for _ in 0..blocks_n {
        x = blocks::mobileone_block(&mut b, &x, 6, 3, 1, 1, 4);
    }
    b.output(&x);
    let (g, w) = b.finish();
    let f = fuse(&g, &FuseOptions::default()).unwrap();
    let fw = f.weights_cpu(&w).unwrap();
    let eq = check_equivalence(&g, &w, &f.graph, &fw, 4).unwrap();
    assert!(eq.passed(), "{:?}", eq);
    (g, w, f)
}

fn rules_used(f: &Fusion) -> std::collections::BTreeSet<&str> {
    f.report.fused.iter().map(|r| r.rule.as_str()).collect()
}

#[test]
fn parallel_branches_of_one_input_fuse_in_one_wave_per_rule() {
    let (_, _, f) = mobileone_chain(1);
    // Each rule that fired did so in exactly one wave: the five conv+BN branches of x
    // fold together, the four Adds flatten together.
    assert_eq!(f.report.waves, rules_used(&f).len(), "{:?}", f.report.fused);
    assert_eq!(f.graph.count("Conv"), 1);
    assert_eq!(f.graph.count("Add"), 0);
}

#[test]
fn the_number_of_waves_does_not_grow_with_the_graph() {
    let (_, _, small) = mobileone_chain(1);
    let (_, _, large) = mobileone_chain(12);
    assert_eq!(large.report.waves, small.report.waves);
    assert_eq!(large.graph.count("Conv"), 12);
}

#[test]
fn a_chain_of_sums_flattens_in_one_patch_keeping_the_summand_order() {
    let mut b = GraphBuilder::new(2);
    let x = b.input("x", &[1, 3, 5, 5]);
    let terms: Vec<String> = (0..5).map(|_| b.relu(&x)).collect();
    let s = b.add_chain(&terms);
    b.output(&s);
    let (g, w) = b.finish();
    let f = fuse(&g, &FuseOptions::default()).unwrap();
    let flat: Vec<_> = f.report.fused.iter().filter(|r| r.rule == "flatten add").collect();
    assert_eq!(flat.len(), 1, "{:?}", f.report.fused);
    assert_eq!(flat[0].from.len(), 4, "all four sums in one patch: {:?}", flat[0]);
    let add = f.graph.nodes.iter().find(|n| n.op == repfuse::graph::Op::Add).unwrap();
    assert_eq!(add.inputs, terms);
    let fw = f.weights_cpu(&w).unwrap();
    assert!(check_equivalence(&g, &w, &f.graph, &fw, 5).unwrap().passed());
}

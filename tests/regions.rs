//! Each fused region verified alone: the original nodes a deploy node replaced, run
//! against that node. Works with ops the reference cannot run elsewhere in the graph,
//! and points at the region that is wrong.

use repfuse::verify::{check_regions, RegionCheck};
use repfuse::zoo::{blocks, GraphBuilder};
use repfuse::{fuse, FuseOptions, Graph, Tensor, Weights};

/// Every fused region of `g`, checked alone against its deploy node with the CPU
/// plan's weights.
fn fused_regions(g: &Graph, w: &Weights) -> Vec<RegionCheck> {
    let f = fuse(g, &FuseOptions::default()).unwrap();
    let fw = f.weights_cpu(w).unwrap();
    check_regions(g, w, &f.graph, &f.origins, &fw, 1).unwrap()
}

#[test]
fn every_region_of_every_zoo_model_checks_alone() {
    for m in ["repvgg_a0", "mobileone_s0", "dbb", "acnet", "replknet", "repnext"] {
        let (g, w, _) = repfuse::zoo::build(m, 1, 32, 4).unwrap();
        let regions = fused_regions(&g, &w);
        assert!(!regions.is_empty(), "{}", m);
        for r in &regions {
            let e = r.error.as_ref().unwrap_or_else(|| panic!("{}: region {} skipped: {:?}", m, r.node, r.skipped));
            assert!(e.passed(), "{}: region {} ({:?}) {:?}", m, r.node, r.from, e);
        }
    }
}

#[test]
fn regions_check_next_to_ops_the_reference_cannot_run() {
    let mut b = GraphBuilder::new(2);
    let x = b.input("x", &[1, 4, 8, 8]);
    let y = blocks::repvgg_block(&mut b, &x, 4, 1, 1);
    let z = b.opaque(&y, "SomeCustomOp");
    b.output(&z);
    let (g, w) = b.finish();
    assert!(repfuse::cpu::forward(&g, &w, &repfuse::verify::random_inputs(&g, 1)).is_err(), "end to end cannot run");
    let regions = fused_regions(&g, &w);
    assert_eq!(regions.len(), 1);
    assert!(regions[0].error.as_ref().unwrap().passed());
}

#[test]
fn a_corrupted_fused_weight_is_caught_in_its_region() {
    let mut b = GraphBuilder::new(3);
    let x = b.input("x", &[1, 4, 8, 8]);
    let y = blocks::repvgg_block(&mut b, &x, 4, 1, 1);
    let y = blocks::acnet_block(&mut b, &y, 4, 3, 1);
    b.output(&y);
    let (g, w) = b.finish();
    let f = fuse(&g, &FuseOptions::default()).unwrap();
    let good = f.weights_cpu(&w).unwrap();
    // Perturb one weight of the second fused conv by 1%.
    let victim = f.graph.nodes.iter().filter(|n| n.op.kind() == "Conv").nth(1).unwrap().clone();
    let wname = victim.op.params()[0].to_string();
    let mut bad = repfuse::Weights::new();
    for (k, t) in good.iter() {
        let t = if *k == wname {
            let mut d = t.data().to_vec();
            d[0] *= 1.01;
            d[0] += 0.01;
            Tensor::new(k, t.shape().to_vec(), d).unwrap()
        } else {
            t.clone()
        };
        bad.insert(k.clone(), t);
    }
    let regions = check_regions(&g, &w, &f.graph, &f.origins, &bad, 1).unwrap();
    let failed: Vec<&str> = regions.iter().filter(|r| !r.error.as_ref().unwrap().passed()).map(|r| r.node.as_str()).collect();
    assert_eq!(failed, vec![victim.name.as_str()]);
}

/// RepGhostNet's block: a depthwise conv+BN and a BN of the same tensor, summed,
/// then added to a shortcut from elsewhere. The merged branch conv cannot run
/// alone (its original region includes the residual Add, which also reads the
/// shortcut), but the residual Add's region runs it: it is reported as inside that
/// checked region, not skipped.
#[test]
fn a_region_inside_a_larger_checked_region_is_reported_as_covered() {
    use repfuse::zoo::ConvSpec;
    let mut b = GraphBuilder::new(5);
    let x = b.input("x", &[1, 4, 8, 8]);
    let p = b.conv_bn(&x, ConvSpec::same(4, 3, 1, 1));
    let p = b.relu(&p);
    let cheap = b.conv_bn(&p, ConvSpec::same(4, 3, 1, 4));
    let fusion = b.bn(&p);
    let ghost = b.add(&[cheap, fusion]);
    let y = b.add(&[x.clone(), ghost]);
    b.output(&y);
    let (g, w) = b.finish();
    let regions = fused_regions(&g, &w);
    let covered: Vec<_> = regions.iter().filter(|r| r.covered_by.is_some()).collect();
    assert!(!covered.is_empty(), "no region lies inside another: {:?}", regions);
    for r in &regions {
        assert!(r.skipped.is_none(), "region {} skipped: {:?}", r.node, r.skipped);
        match &r.covered_by {
            None => assert!(r.error.as_ref().expect("checked").passed(), "region {} {:?}", r.node, r.error),
            Some(m) => {
                // The covering region was checked, ran this node, and holds all of its
                // original nodes.
                let m = regions.iter().find(|x| &x.node == m).expect("the covering region is reported");
                assert!(m.error.as_ref().is_some_and(|e| e.passed()), "{:?}", m);
                assert!(m.deploy_nodes.contains(&r.node), "{} did not run {}", m.node, r.node);
                assert!(r.from.iter().all(|n| m.from.contains(n)), "{:?} not inside {:?}", r.from, m.from);
                assert!(r.error.is_none());
            }
        }
    }
}

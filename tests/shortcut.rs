//! Paradigm 6b (opt-in): residual shortcuts of ConvNeXt/RepNeXt-style blocks are
//! absorbed by widening the block, exactly; off by default.

mod common;

use repfuse::graph::Activation;
use repfuse::verify::{check_equivalence, compare, Tolerance};
use repfuse::zoo::{ConvSpec, GraphBuilder};
use repfuse::{fuse, FuseOptions};

/// dw KxK -> 1x1 expand -> act -> 1x1 project, plus x.
fn block(c: usize, k: usize, h: usize, act: Activation, hw: [usize; 2]) -> (repfuse::Graph, repfuse::Weights) {
    let mut b = GraphBuilder::new(c as u64 * 31 + k as u64);
    let x = b.input("x", &[2, c, hw[0], hw[1]]);
    let d = b.conv(&x, ConvSpec::same(c, k, 1, c).with_bias());
    let e = b.conv(&d, ConvSpec::same(h, 1, 1, 1).with_bias());
    let a = b.act(&e, act);
    let p = b.conv(&a, ConvSpec::same(c, 1, 1, 1).with_bias());
    let y = b.add(&[p, x]);
    b.output(&y);
    b.finish()
}

#[test]
fn shortcut_is_kept_by_default_and_absorbed_when_asked() {
    for (act, k) in [(Activation::Relu, 3), (Activation::Gelu, 7), (Activation::Silu, 5), (Activation::LeakyRelu(0.1), 3)] {
        let (g, w) = block(6, k, 12, act, [7, 5]);
        let plain = fuse(&g, &FuseOptions::default()).unwrap();
        assert_eq!(plain.graph.count("Add"), 1, "{:?}: opt-in only", act);
        let wide = fuse(&g, &FuseOptions { widen_shortcuts: true, ..Default::default() }).unwrap();
        assert_eq!(wide.graph.count("Add"), 0, "{:?}", act);
        assert_eq!(wide.graph.count("Conv"), 3, "{:?}", act);
        assert!(wide.report.flops_after > wide.report.flops_before, "{:?}: widening costs FLOPs and the report says so", act);
        let fw = wide.weights_cpu(&w).unwrap();
        let e = check_equivalence(&g, &w, &wide.graph, &fw, 4).unwrap();
        assert!(e.passed(), "{:?}: {:?}", act, e);
    }
}

#[test]
fn gpu_widened_plan_matches_the_cpu_reference() {
    let ctx = common::gpu();
    for (act, k) in [(Activation::Relu, 3), (Activation::Gelu, 7), (Activation::Silu, 5), (Activation::LeakyRelu(0.1), 3)] {
        let (g, w) = block(6, k, 12, act, [7, 5]);
        let wide = fuse(&g, &FuseOptions { widen_shortcuts: true, ..Default::default() }).unwrap();
        let cpu = repfuse::cpu::execute_plan(&wide.plan, &w).unwrap();
        let gpu = repfuse::gpu::execute_plan_gpu(ctx, &wide.plan, &w).unwrap();
        assert!(!cpu.is_empty());
        for (k, t) in &cpu {
            assert!(compare(&gpu[k], t, Tolerance::f32_sums(16)).unwrap().passed(), "{:?}: {} differs on the GPU", act, k);
        }
    }
}

#[test]
fn activations_without_an_odd_identity_part_are_not_widened() {
    // sigmoid(x) - sigmoid(-x) is not proportional to x: the shortcut must stay.
    let (g, _) = block(4, 3, 8, Activation::Sigmoid, [5, 5]);
    let wide = fuse(&g, &FuseOptions { widen_shortcuts: true, ..Default::default() }).unwrap();
    assert_eq!(wide.graph.count("Add"), 1);
}

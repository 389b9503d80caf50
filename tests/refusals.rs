//! Every rewrite that would not be exact is refused with a reason, the nodes it
//! concerns are left in the deploy graph, and the deploy graph still computes what
//! the original computes (checked against the CPU reference forward of the original).

mod common;
use common::fusion as support;

use proptest::prelude::*;
use repfuse::cpu::primitives::dirac;
use repfuse::fuse::geometry::{merge_windows, Window};
use repfuse::graph::{Activation, Op, Opaque};
use repfuse::zoo::{ConvSpec, GraphBuilder};
use support::*;

fn spec(out: usize, kernel: [usize; 2], stride: usize, pads: [usize; 4], dilation: usize, groups: usize, bias: bool) -> ConvSpec {
    ConvSpec { out, kernel, stride, pads, dilation, groups, bias }
}

// ---------------------------------------------------------------------------------
// 1x1 -> KxK: a bias on the 1x1 path with zero padding on the KxK is not exact.

#[test]
fn bias_and_zero_padding_in_1x1_then_kxk_is_refused() {
    // conv1x1 pad 0 + BN -> conv3x3 pad 1 + BN (the seed's fuse_1x1_kxk_conv case).
    let mut b = GraphBuilder::new(1);
    let x = b.input("x", &[2, 4, 6, 5]);
    let t = b.conv_bn(&x, ConvSpec::same(6, 1, 1, 1));
    let y = b.conv_bn(&t, ConvSpec::same(5, 3, 1, 1));
    b.output(&y);
    let (g, w) = b.finish();
    let f = fuse_checked(&g, &w, 1);
    // Both BNs fold (exact); the composition does not happen.
    assert_ops(&f, &[("Conv", 2), ("BatchNorm", 0)]);
    assert_refused(&f, "compose_sequence", &["conv1", "conv3"], "bias");
}

proptest! {
    #![proptest_config(config(48))]

    /// Any 1x1 path with a bias (its own, its BN's, or both) into a KxK that zero-pads
    /// on any side: two convs stay, with a refusal naming both.
    #[test]
    fn biased_1x1_into_padded_kxk_is_always_refused(
        n in 1usize..=3, cin in 1usize..=6, mid in 1usize..=6, out in 1usize..=6,
        g in 1usize..=2, k in 1usize..=4, side in 0usize..4, p in 1usize..=2,
        bias_source in 0usize..3, stride in 1usize..=2, dilation in 1usize..=2,
        hw in (1usize..=10, 1usize..=10), seed in any::<u64>(),
    ) {
        let (cin, mid, out) = (cin * g, mid * g, out * g);
        let mut pads = [0; 4];
        pads[side] = p;
        let (conv_bias, bn) = [(true, false), (false, true), (true, true)][bias_source];
        let h = hw.0.max(min_len(k, dilation, pads[0] + pads[2]));
        let w = hw.1.max(min_len(k, dilation, pads[1] + pads[3]));
        let mut b = GraphBuilder::new(seed);
        let x = b.input("x", &[n, cin, h, w]);
        let s1 = spec(mid, [1, 1], 1, [0; 4], 1, g, conv_bias);
        let t = if bn { b.conv_bn(&x, s1) } else { b.conv(&x, s1) };
        let y = b.conv(&t, spec(out, [k, k], stride, pads, dilation, g, false));
        b.output(&y);
        let (gr, wt) = b.finish();
        let f = fuse_checked(&gr, &wt, seed);
        assert_ops(&f, &[("Conv", 2), ("BatchNorm", 0)]);
        let second = if bn { "conv3" } else { "conv2" };
        assert_refused(&f, "compose_sequence", &["conv1", second], "bias");
    }
}

/// A BN before a zero-padded conv cannot fold into it (the border would see 0, not
/// the BN's shift).
#[test]
fn bn_before_a_padded_conv_is_refused() {
    for pads in [[1, 1, 1, 1], [0, 0, 1, 0], [0, 2, 0, 0]] {
        let mut b = GraphBuilder::new(2);
        let x = b.input("x", &[2, 3, 5, 6]);
        let t = b.bn(&x);
        let y = b.conv(&t, spec(4, [3, 3], 1, pads, 1, 1, true));
        b.output(&y);
        let (g, w) = b.finish();
        let f = fuse_checked(&g, &w, 2);
        assert_ops(&f, &[("Conv", 1), ("BatchNorm", 1)]);
        assert_refused(&f, "fold_bn_into_next", &["bn1", "conv2"], "pad");
    }
}

// ---------------------------------------------------------------------------------
// Average pooling: count_include_pad=False with padding, and ceil-mode overhang.

#[test]
fn avgpool_without_count_include_pad_and_with_padding_is_refused() {
    let mut b = GraphBuilder::new(3);
    let x = b.input("x", &[2, 4, 7, 6]);
    let c = b.conv_bn(&x, ConvSpec::same(4, 3, 1, 1));
    let p = b.avg_pool(&x, 3, 1, 1, false);
    let s = b.add(&[c, p]);
    b.output(&s);
    let (g, w) = b.finish();
    let f = fuse_checked(&g, &w, 3);
    assert_ops(&f, &[("AvgPool", 1), ("Add", 1), ("Conv", 1), ("BatchNorm", 0)]);
    assert_refused(&f, "avgpool_to_conv", &["avgpool3"], "count_include_pad");
}

proptest! {
    #![proptest_config(config(48))]

    /// The same for any odd pool size, stride and padding, as a merge branch (next to
    /// a conv of the same input) or after a 1x1 conv it could compose with (DBB).
    #[test]
    fn padded_avgpool_excluding_pad_is_always_refused(
        n in 1usize..=3, c in 1usize..=6, kp in prop_oneof![Just(3usize), Just(5)], pad in 1usize..=2,
        stride in 1usize..=2, after_conv in any::<bool>(), bn in any::<bool>(),
        hw in (1usize..=10, 1usize..=10), seed in any::<u64>(),
    ) {
        let pad = pad.min(kp / 2);
        let (h, w) = (hw.0.max(kp - 2 * pad), hw.1.max(kp - 2 * pad));
        let mut b = GraphBuilder::new(seed);
        let x = b.input("x", &[n, c, h, w]);
        let (y, pool) = if after_conv {
            let t = b.conv(&x, ConvSpec::same(c, 1, 1, 1));
            let p = b.avg_pool(&t, kp, stride, pad, false);
            (p, "avgpool2")
        } else {
            // the pool's own window, so the sum is shape-valid
            let conv = b.conv(&x, ConvSpec::same(c, kp, stride, 1).pad(pad));
            let p = b.avg_pool(&x, kp, stride, pad, false);
            let q = if bn { b.bn(&p) } else { p.clone() };
            (b.add(&[conv, q]), "avgpool2")
        };
        let y = if after_conv && bn { b.bn(&y) } else { y };
        b.output(&y);
        let (g, w) = b.finish();
        let f = fuse_checked(&g, &w, seed);
        assert_ops(&f, &[("AvgPool", 1)]);
        assert_refused(&f, "avgpool_to_conv", &[pool], "count_include_pad");
    }
}

/// ceil_mode adds a partial window at the border, which no conv computes.
#[test]
fn avgpool_in_ceil_mode_with_a_partial_window_is_refused() {
    let mut b = GraphBuilder::new(4);
    let x = b.input("x", &[1, 3, 6, 6]);
    let c = b.conv(&x, ConvSpec::same(3, 3, 2, 1)); // 6 -> 3
    let p = b.avg_pool(&x, 3, 2, 0, true); // floor 2, ceil 3
    let s = b.add(&[c, p]);
    b.output(&s);
    let (mut g, w) = b.finish();
    for n in &mut g.nodes {
        if let Op::AvgPool2d(p) = &mut n.op {
            p.ceil_mode = true;
        }
    }
    let f = fuse_checked(&g, &w, 4);
    assert_ops(&f, &[("AvgPool", 1), ("Add", 1)]);
    assert_refused(&f, "avgpool_to_conv", &["avgpool2"], "ceil");
}

// ---------------------------------------------------------------------------------
// Even kernels: no dirac, but an identity still aligns when the padding is exact.

#[test]
fn dirac_of_an_even_kernel_is_an_error() {
    for k in [[2, 2], [2, 3], [3, 2], [4, 4]] {
        let e = dirac(4, 1, k).expect_err("an even kernel has no centre tap");
        assert!(e.to_string().contains("even"), "{}", e);
    }
    assert!(dirac(4, 3, [3, 3]).is_err(), "groups must divide channels");
    assert!(dirac(4, 0, [3, 3]).is_err(), "zero groups");
    assert!(dirac(4, 2, [3, 1]).is_ok());
}

#[test]
fn even_kernel_with_an_exact_one_sided_padding_and_identity_fuses() {
    // 2x2 with pads [0,0,1,1] (or [1,1,0,0]) keeps the size, and the identity sits at
    // one corner tap: exact, so it must fuse.
    for (pads, groups) in [([0, 0, 1, 1], 1), ([1, 1, 0, 0], 2), ([0, 1, 1, 0], 4)] {
        for bn_identity in [false, true] {
            let mut b = GraphBuilder::new(5);
            let x = b.input("x", &[2, 4, 5, 7]);
            let c = b.conv_bn(&x, spec(4, [2, 2], 1, pads, 1, groups, false));
            let id = if bn_identity { b.bn(&x) } else { x.clone() };
            let s = b.add(&[c, id]);
            b.output(&s);
            let (g, w) = b.finish();
            let f = fuse_checked(&g, &w, 5);
            assert_ops(&f, &[("Conv", 1), ("Add", 0), ("BatchNorm", 0)]);
            assert_eq!(f.convs()[0].kernel, [2, 2]);
            assert_eq!(f.convs()[0].pads, pads);
            assert_eq!(f.convs()[0].groups, groups);
        }
    }
}

#[test]
fn even_kernel_with_a_bn_branch_that_cannot_align_is_refused() {
    // 2x2 stride 2 pad 1 on a 2x2 map gives 2x2, like the BN branch; but the conv
    // samples every other position and the BN every position.
    let mut b = GraphBuilder::new(6);
    let x = b.input("x", &[3, 4, 2, 2]);
    let c = b.conv_bn(&x, spec(4, [2, 2], 2, [1; 4], 1, 1, false));
    let id = b.bn(&x);
    let s = b.add(&[c, id]);
    b.output(&s);
    let (g, w) = b.finish();
    let f = fuse_checked(&g, &w, 6);
    assert_ops(&f, &[("Conv", 2), ("Add", 1)]);
    assert_refused(&f, "merge_add", &["conv1", "bn3"], "stride");
}

// ---------------------------------------------------------------------------------
// Mismatched strides.

#[test]
fn branches_with_different_strides_are_refused() {
    // 1x1 s1 pad 0 and 3x3 s2 pad 2 both map 3x3 to 3x3, sampling different places.
    let mut b = GraphBuilder::new(7);
    let x = b.input("x", &[2, 3, 3, 3]);
    let a = b.conv_bn(&x, ConvSpec::same(4, 1, 1, 1));
    let c = b.conv_bn(&x, ConvSpec::same(4, 3, 2, 1).pad(2));
    let s = b.add(&[a, c]);
    b.output(&s);
    let (g, w) = b.finish();
    let f = fuse_checked(&g, &w, 7);
    assert_ops(&f, &[("Conv", 2), ("Add", 1), ("BatchNorm", 0)]);
    assert_refused(&f, "merge_add", &["conv1", "conv3"], "stride");
}

#[test]
fn merge_windows_names_differing_strides() {
    let w = |k: usize, s: [usize; 2], p: usize| Window { kernel: [k, k], stride: s, pads: [p; 4], dilation: [1, 1] };
    let e = merge_windows(&[w(1, [1, 1], 0), w(3, [2, 2], 1)]).expect_err("strides differ");
    assert!(e.contains("stride") && e.contains("height"), "{}", e);
    let e = merge_windows(&[w(3, [2, 2], 1), w(3, [2, 1], 1)]).expect_err("strides differ along width");
    assert!(e.contains("stride") && e.contains("width"), "{}", e);
    // Same stride, centred: merges into the larger window with the smaller centred.
    let m = merge_windows(&[w(1, [2, 2], 0), w(5, [2, 2], 2), w(3, [2, 2], 1)]).unwrap();
    assert_eq!(m.window.kernel, [5, 5]);
    assert_eq!(m.window.pads, [2; 4]);
    assert_eq!(m.offsets, vec![[2, 2], [0, 0], [1, 1]]);
}

#[test]
fn merge_windows_refuses_misaligned_padding() {
    // A 3x3 pad 1 and a 3x3 pad 0 are not centred on each other.
    let a = Window { kernel: [3, 3], stride: [1, 1], pads: [1; 4], dilation: [1, 1] };
    let b = Window { kernel: [3, 3], stride: [1, 1], pads: [0; 4], dilation: [1, 1] };
    let e = merge_windows(&[a, b]).expect_err("different output sizes");
    assert!(e.contains("padding"), "{}", e);
}

// ---------------------------------------------------------------------------------
// A conv whose output has other readers is not fused away.

#[test]
fn conv_output_that_is_also_a_graph_output_keeps_its_bn() {
    let mut b = GraphBuilder::new(8);
    let x = b.input("x", &[2, 3, 5, 5]);
    let c = b.conv(&x, ConvSpec::same(4, 3, 1, 1));
    let y = b.bn(&c);
    b.output(&y);
    b.output(&c);
    let (g, w) = b.finish();
    let f = fuse_checked(&g, &w, 8);
    assert_ops(&f, &[("Conv", 1), ("BatchNorm", 1)]);
    assert_refused(&f, "fold_bn_into_conv", &["conv1", "bn2"], "read elsewhere");
}

#[test]
fn conv_output_read_by_a_second_node_keeps_its_bn() {
    let mut b = GraphBuilder::new(9);
    let x = b.input("x", &[2, 3, 5, 5]);
    let c = b.conv(&x, ConvSpec::same(4, 3, 1, 1));
    let y = b.bn(&c);
    let r = b.relu(&c);
    b.output(&y);
    b.output(&r);
    let (g, w) = b.finish();
    let f = fuse_checked(&g, &w, 9);
    assert_ops(&f, &[("Conv", 1), ("BatchNorm", 1), ("Activation", 1)]);
    assert_refused(&f, "fold_bn_into_conv", &["conv1", "bn2"], "read elsewhere");
}

#[test]
fn shared_branch_or_sequence_outputs_are_not_fused_away() {
    // A summed branch that is also a graph output, and a 1x1 -> 3x3 pair whose middle
    // is read by a ReLU: fusing either would lose a tensor someone reads.
    let mut b = GraphBuilder::new(10);
    let x = b.input("x", &[2, 4, 6, 6]);
    let a = b.conv(&x, ConvSpec::same(4, 3, 1, 1));
    let c = b.conv(&x, ConvSpec::same(4, 1, 1, 1));
    let s = b.add(&[a.clone(), c]);
    let m = b.conv(&s, ConvSpec::same(4, 1, 1, 1));
    let y = b.conv(&m, ConvSpec::same(4, 3, 1, 1).pad(0));
    let r = b.relu(&m);
    b.output(&y);
    b.output(&r);
    b.output(&a);
    let (g, w) = b.finish();
    let f = fuse_checked(&g, &w, 10);
    assert_ops(&f, &[("Conv", 4), ("Add", 1)]);
    for name in ["conv1", "conv4", "conv5"] {
        assert!(f.graph().node(name).is_some(), "`{}` was fused away\n{}", name, f.summary());
    }
}

// ---------------------------------------------------------------------------------
// Opaque ops: carried through verbatim; what feeds them computes the same.

#[test]
fn opaque_ops_are_carried_through_and_their_inputs_are_unchanged() {
    // The builder infers shapes, which stop at an opaque op; so build with ReLU
    // placeholders and turn them into opaque ops afterwards.
    let mut b = GraphBuilder::new(11);
    let x = b.input("x", &[2, 4, 6, 6]);
    // conv+BN -> ReLU -> Foo -> conv+BN
    let c = b.conv_bn(&x, ConvSpec::same(4, 3, 1, 1)); // conv1, bn2
    let r = b.relu(&c); // act3
    let o = b.relu(&r); // act4 -> Foo
    let d = b.conv_bn(&o, ConvSpec::same(4, 1, 1, 1)); // conv5, bn6
                                                       // a conv read by both Bar and a BN
    let e = b.conv(&x, ConvSpec::same(4, 3, 1, 2)); // conv7
    let o2 = b.relu(&e); // act8 -> Bar
    let e_bn = b.bn(&e); // bn9
                         // an identity shortcut on Bar's output, whose shape is unknown: unproven
    let k = b.conv(&o2, ConvSpec::same(4, 3, 1, 1)); // conv10
    let s = b.add(&[k, o2.clone()]); // add11
    b.output(&d);
    b.output(&e_bn);
    b.output(&s);
    let (mut g, w) = b.finish();
    for n in &mut g.nodes {
        let op_type = match n.name.as_str() {
            "act4" => "Foo",
            "act8" => "Bar",
            _ => continue,
        };
        n.op = Op::Opaque(Opaque { op_type: op_type.into(), payload: vec![1, 2, 3], shape_hint: None, why: None });
    }
    let f = repfuse::fuse(&g, &repfuse::FuseOptions::default()).unwrap();
    let fw = f.weights_cpu(&w).unwrap();

    for name in ["act4", "act8"] {
        let before = g.node(name).unwrap();
        let after = f.graph.node(name).unwrap_or_else(|| panic!("`{}` is gone", name));
        assert_eq!(after, before, "opaque node `{}` changed", name);
        for t in &after.inputs {
            assert!(f.graph.nodes.iter().any(|n| n.outputs.contains(t)), "`{}` reads `{}`, which nothing produces now", name, t);
        }
    }
    assert!(f.graph.node("bn9").is_some(), "the BN on a conv output that Bar also reads must stay");
    assert!(f.report.refused.iter().any(|r| r.rule == "fold_bn_into_conv" && r.nodes == ["conv7", "bn9"]), "{:#?}", f.report.refused);
    assert_eq!(f.graph.count("Add"), 1, "an identity on an opaque output is not proven to fit");

    // The CPU reference cannot run Foo/Bar. Substitute a known op for them in both
    // graphs: then the whole deploy graph must compute what the original computes.
    let substitute = |g: &repfuse::Graph| {
        let mut g = g.clone();
        for n in &mut g.nodes {
            if matches!(n.op, Op::Opaque(_)) {
                n.op = Op::Activation(Activation::Tanh);
            }
        }
        g
    };
    assert_equivalent(&substitute(&g), &w, &substitute(&f.graph), &fw, 11, &format!("{:#?}", f.report));
}

/// "Every rewrite is exact or refused with a reason" (README, "Exactness and proof"). A summed branch
/// and a 1x1 -> KxK pair left unfused because a tensor has other readers should be
/// reported like the conv+BN case is.
#[test]
fn unfused_shared_branches_and_sequences_are_reported() {
    let mut b = GraphBuilder::new(10);
    let x = b.input("x", &[2, 4, 6, 6]);
    let a = b.conv(&x, ConvSpec::same(4, 3, 1, 1)); // conv1, also a graph output
    let c = b.conv(&x, ConvSpec::same(4, 1, 1, 1)); // conv2
    let s = b.add(&[a.clone(), c]);
    let m = b.conv(&s, ConvSpec::same(4, 1, 1, 1)); // conv4, also read by a ReLU
    let y = b.conv(&m, ConvSpec::same(4, 3, 1, 1).pad(0)); // conv5
    let r = b.relu(&m);
    b.output(&y);
    b.output(&r);
    b.output(&a);
    let (g, w) = b.finish();
    let f = fuse_checked(&g, &w, 10);
    assert!(f.refusals("merge_add").iter().any(|r| r.nodes.iter().any(|n| n == "conv1")), "{}", f.summary());
    assert!(f.refusals("compose_sequence").iter().any(|r| r.nodes == ["conv4", "conv5"]), "{}", f.summary());
}

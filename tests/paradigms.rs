//! The nine re-parameterization paradigms as CPU property tests. Each property builds
//! a small training-form graph over generated channels, groups, kernels, strides,
//! paddings, dilations and biases, fuses it, and asserts
//! - the deploy graph computes what the original computes (the CPU reference forward
//!   of the original is the only source of expected values; tolerance from verify.rs),
//! - the deploy graph has the expected ops (e.g. one Conv, no BatchNorm, no Add) and
//!   the coarsest exact group count.

// Each case function takes the generated shape parameters one by one, mirroring the
// proptest strategy tuple that feeds it.
#![allow(clippy::too_many_arguments)]

mod common;
use common::fusion as support;

use proptest::prelude::*;
use repfuse::graph::Op;
use repfuse::zoo::{blocks, ConvSpec, GraphBuilder};
use support::*;

/// A conv spec from every field, for generated geometry.
fn spec(out: usize, kernel: [usize; 2], stride: usize, pads: [usize; 4], dilation: usize, groups: usize, bias: bool) -> ConvSpec {
    ConvSpec { out, kernel, stride, pads, dilation, groups, bias }
}

/// PyTorch "same" padding of a (possibly asymmetric, dilated) kernel.
fn same_pads(kernel: [usize; 2], dilation: usize) -> [usize; 4] {
    let (ph, pw) = ((kernel[0] / 2) * dilation, (kernel[1] / 2) * dilation);
    [ph, pw, ph, pw]
}

/// Spatial size large enough for `kernel` with `pads` (grows a generated size).
fn fit(len: usize, kernel: usize, dilation: usize, pad_total: usize) -> usize {
    len.max(min_len(kernel, dilation, pad_total))
}

// ---------------------------------------------------------------------------------
// Paradigm 1: conv + BN, BN + following conv, Linear + BN1d.

fn conv_bn_case(
    n: usize,
    cin: usize,
    out: usize,
    gi: usize,
    kernel: [usize; 2],
    stride: usize,
    pads: [usize; 4],
    dilation: usize,
    bias: bool,
    hw: [usize; 2],
    seed: u64,
) {
    let groups = divisor(gcd(cin, out), gi);
    let h = fit(hw[0], kernel[0], dilation, pads[0] + pads[2]);
    let w = fit(hw[1], kernel[1], dilation, pads[1] + pads[3]);
    let mut b = GraphBuilder::new(seed);
    let x = b.input("x", &[n, cin, h, w]);
    let y = b.conv_bn(&x, spec(out, kernel, stride, pads, dilation, groups, bias));
    b.output(&y);
    let (g, wt) = b.finish();
    let f = fuse_checked(&g, &wt, seed);
    assert_ops(&f, &[("Conv", 1), ("BatchNorm", 0)]);
    assert_eq!(f.convs()[0].groups, groups, "conv+BN keeps the conv's groups\n{}", f.summary());
    assert!(f.convs()[0].bias.is_some(), "the folded conv carries the BN shift as its bias");
}

/// BN -> conv without padding: the BN folds into the following conv's input side.
fn bn_conv_case(n: usize, cin: usize, out: usize, gi: usize, k: usize, stride: usize, dilation: usize, bias: bool, hw: [usize; 2], seed: u64) {
    let groups = divisor(gcd(cin, out), gi);
    let (h, w) = (fit(hw[0], k, dilation, 0), fit(hw[1], k, dilation, 0));
    let mut b = GraphBuilder::new(seed);
    let x = b.input("x", &[n, cin, h, w]);
    let t = b.bn(&x);
    let y = b.conv(&t, spec(out, [k, k], stride, [0; 4], dilation, groups, bias));
    b.output(&y);
    let (g, wt) = b.finish();
    let f = fuse_checked(&g, &wt, seed);
    assert_ops(&f, &[("Conv", 1), ("BatchNorm", 0)]);
    assert_eq!(f.convs()[0].groups, groups, "{}", f.summary());
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn p1_conv_bn_folds_into_one_conv(
        n in 1usize..=3, cin in 1usize..=8, out in 1usize..=8, gi in 0usize..8,
        kernel in (1usize..=5, 1usize..=5), stride in 1usize..=2,
        pads in (0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2),
        dilation in 1usize..=2, bias in any::<bool>(), hw in (1usize..=12, 1usize..=12), seed in any::<u64>(),
    ) {
        conv_bn_case(n, cin, out, gi, [kernel.0, kernel.1], stride, [pads.0, pads.1, pads.2, pads.3], dilation, bias, [hw.0, hw.1], seed);
    }

    #[test]
    fn p1_bn_folds_into_following_unpadded_conv(
        n in 1usize..=3, cin in 1usize..=8, out in 1usize..=8, gi in 0usize..8,
        k in prop_oneof![Just(1usize), Just(1), Just(3)], stride in 1usize..=2,
        dilation in 1usize..=2, bias in any::<bool>(), hw in (1usize..=12, 1usize..=12), seed in any::<u64>(),
    ) {
        bn_conv_case(n, cin, out, gi, k, stride, dilation, bias, [hw.0, hw.1], seed);
    }

    #[test]
    fn p1_linear_and_bn1d_fold_into_one_linear(
        n in 1usize..=3, fin in 1usize..=12, fout in 1usize..=12, bias in any::<bool>(),
        bn_first in any::<bool>(), seed in any::<u64>(),
    ) {
        let mut b = GraphBuilder::new(seed);
        let x = b.input("x", &[n, fin]);
        let y = if bn_first {
            let t = b.bn(&x);
            b.linear(&t, fout, bias)
        } else {
            let t = b.linear(&x, fout, bias);
            b.bn(&t)
        };
        b.output(&y);
        let (g, wt) = b.finish();
        let f = fuse_checked(&g, &wt, seed);
        assert_ops(&f, &[("Linear", 1), ("BatchNorm", 0), ("Conv", 0)]);
    }
}

// ---------------------------------------------------------------------------------
// Paradigm 2: N parallel convs (each maybe with BN) of one geometry, summed.

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn p2_n_branch_add_merges_into_one_conv(
        n in 1usize..=3, cin in 1usize..=8, out in 1usize..=8,
        branches in prop::collection::vec((0usize..8, any::<bool>(), any::<bool>()), 2..=4),
        kernel in (1usize..=4, 1usize..=4), stride in 1usize..=2,
        pads in (0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2), dilation in 1usize..=2,
        chain in any::<bool>(), hw in (1usize..=12, 1usize..=12), seed in any::<u64>(),
    ) {
        let kernel = [kernel.0, kernel.1];
        let pads = [pads.0, pads.1, pads.2, pads.3];
        let h = fit(hw.0, kernel[0], dilation, pads[0] + pads[2]);
        let w = fit(hw.1, kernel[1], dilation, pads[1] + pads[3]);
        let mut b = GraphBuilder::new(seed);
        let x = b.input("x", &[n, cin, h, w]);
        let mut outs = vec![];
        let mut expect_groups = 0;
        for &(gi, bias, bn) in &branches {
            let groups = divisor(gcd(cin, out), gi);
            expect_groups = gcd(expect_groups, groups);
            let s = spec(out, kernel, stride, pads, dilation, groups, bias);
            outs.push(if bn { b.conv_bn(&x, s) } else { b.conv(&x, s) });
        }
        let y = if chain { b.add_chain(&outs) } else { b.add(&outs) };
        b.output(&y);
        let (g, wt) = b.finish();
        let f = fuse_checked(&g, &wt, seed);
        assert_ops(&f, &[("Conv", 1), ("BatchNorm", 0), ("Add", 0)]);
        // The coarsest exact group count of a sum is the gcd of the branches' counts.
        prop_assert_eq!(f.convs()[0].groups, expect_groups, "{}", f.summary());
    }
}

// ---------------------------------------------------------------------------------
// Paradigm 3: depth concatenation of parallel convs (centred kernels of any odd size).

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn p3_depth_concat_merges_into_one_conv(
        n in 1usize..=3, cin in 1usize..=8,
        branches in prop::collection::vec((1usize..=6, 0usize..8, prop_oneof![Just(1usize), Just(3), Just(5)], any::<bool>(), any::<bool>()), 2..=4),
        stride in 1usize..=2, dilation in 1usize..=2, hw in (1usize..=12, 1usize..=12), seed in any::<u64>(),
    ) {
        let mut b = GraphBuilder::new(seed);
        let x = b.input("x", &[n, cin, hw.0, hw.1]);
        let mut outs = vec![];
        let mut total = 0;
        for &(out, gi, k, bias, bn) in &branches {
            let groups = divisor(gcd(cin, out), gi);
            let s = spec(out, [k, k], stride, same_pads([k, k], dilation), dilation, groups, bias);
            outs.push(if bn { b.conv_bn(&x, s) } else { b.conv(&x, s) });
            total += out;
        }
        let y = b.concat(&outs);
        b.output(&y);
        let (g, wt) = b.finish();
        let f = fuse_checked(&g, &wt, seed);
        assert_ops(&f, &[("Conv", 1), ("BatchNorm", 0), ("Concat", 0)]);
        prop_assert_eq!(f.convs()[0].out_channels, total);
    }
}

// ---------------------------------------------------------------------------------
// Paradigm 4: kernels of different sizes: ACNet's KxK + 1xK + Kx1, and 1x1 + 3x3 + 5x5
// with per-branch dilation and groups.

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn p4_acnet_asymmetric_branches_merge(
        n in 1usize..=3, cin in 1usize..=8, out in 1usize..=8, gi in 0usize..8,
        k in prop_oneof![Just(3usize), Just(5), Just(7)], stride in 1usize..=2, dilation in 1usize..=2,
        bias in any::<bool>(), hw in (1usize..=12, 1usize..=12), seed in any::<u64>(),
    ) {
        let groups = divisor(gcd(cin, out), gi);
        let mut b = GraphBuilder::new(seed);
        let x = b.input("x", &[n, cin, hw.0, hw.1]);
        let outs: Vec<String> = [[k, k], [1, k], [k, 1]]
            .into_iter()
            .map(|kernel| b.conv_bn(&x, spec(out, kernel, stride, same_pads(kernel, dilation), dilation, groups, bias)))
            .collect();
        let y = b.add_chain(&outs);
        b.output(&y);
        let (g, wt) = b.finish();
        let f = fuse_checked(&g, &wt, seed);
        assert_ops(&f, &[("Conv", 1), ("BatchNorm", 0), ("Add", 0)]);
        let c = f.convs()[0];
        prop_assert_eq!(c.groups, groups);
        prop_assert_eq!(c.kernel, [k, k]);
    }

    #[test]
    fn p4_1x1_3x3_5x5_merge_with_mixed_dilation_and_groups(
        n in 1usize..=3, cin in 1usize..=8, out in 1usize..=8,
        branches in (((0usize..8), 1usize..=2), ((0usize..8), 1usize..=2), ((0usize..8), 1usize..=2)),
        stride in 1usize..=2, bias in any::<bool>(), hw in (1usize..=12, 1usize..=12), seed in any::<u64>(),
    ) {
        let mut b = GraphBuilder::new(seed);
        let x = b.input("x", &[n, cin, hw.0, hw.1]);
        let mut outs = vec![];
        let mut expect_groups = 0;
        for (k, (gi, d)) in [(1, branches.0), (3, branches.1), (5, branches.2)] {
            let groups = divisor(gcd(cin, out), gi);
            expect_groups = gcd(expect_groups, groups);
            outs.push(b.conv_bn(&x, spec(out, [k, k], stride, same_pads([k, k], d), d, groups, bias)));
        }
        let y = b.add(&outs);
        b.output(&y);
        let (g, wt) = b.finish();
        let f = fuse_checked(&g, &wt, seed);
        assert_ops(&f, &[("Conv", 1), ("BatchNorm", 0), ("Add", 0)]);
        prop_assert_eq!(f.convs()[0].groups, expect_groups, "{}", f.summary());
    }
}

/// Per-axis bottom/right padding that gives window `k`/`d` the output length `want`
/// on an input of `len` with stride `s` and top/left padding `lead`, if one exists.
fn tail_pad_for(want: usize, len: usize, k: usize, d: usize, s: usize, lead: usize) -> Option<usize> {
    (0..=2 * k * d).find(|&tail| repfuse::graph::window_out(len, k, s, lead + tail, d, false) == Some(want))
}

proptest! {
    #![proptest_config(config(48))]

    /// Any two windows (kernel, dilation, per-side padding) over one input whose
    /// outputs have the same size: summed, they either become one conv, or stay two
    /// with a `merge_add` refusal. Always exact.
    #[test]
    fn p4_any_two_windows_merge_or_refuse(
        n in 1usize..=2, cin in 1usize..=4, out in 1usize..=4,
        ka in (1usize..=5, 1usize..=5), kb in (1usize..=5, 1usize..=5), da in 1usize..=2, db in 1usize..=2,
        lead_a in (0usize..=3, 0usize..=3), tail_a in (0usize..=3, 0usize..=3), lead_b in (0usize..=3, 0usize..=3),
        stride in 1usize..=2, hw in (1usize..=10, 1usize..=10), seed in any::<u64>(),
    ) {
        let (ka, kb) = ([ka.0, ka.1], [kb.0, kb.1]);
        let pads_a = [lead_a.0, lead_a.1, tail_a.0, tail_a.1];
        let h = fit(fit(hw.0, ka[0], da, pads_a[0] + pads_a[2]), kb[0], db, lead_b.0);
        let w = fit(fit(hw.1, ka[1], da, pads_a[1] + pads_a[3]), kb[1], db, lead_b.1);
        let oh = repfuse::graph::window_out(h, ka[0], stride, pads_a[0] + pads_a[2], da, false).unwrap();
        let ow = repfuse::graph::window_out(w, ka[1], stride, pads_a[1] + pads_a[3], da, false).unwrap();
        let tail_b = (tail_pad_for(oh, h, kb[0], db, stride, lead_b.0), tail_pad_for(ow, w, kb[1], db, stride, lead_b.1));
        let (Some(tb0), Some(tb1)) = tail_b else {
            return Err(TestCaseError::reject("no padding gives the second window the same output size"));
        };
        let pads_b = [lead_b.0, lead_b.1, tb0, tb1];
        let mut b = GraphBuilder::new(seed);
        let x = b.input("x", &[n, cin, h, w]);
        let a = b.conv_bn(&x, spec(out, ka, stride, pads_a, da, 1, false));
        let c = b.conv_bn(&x, spec(out, kb, stride, pads_b, db, 1, true));
        let y = b.add(&[a, c]);
        b.output(&y);
        let (g, wt) = b.finish();
        let f = fuse_checked(&g, &wt, seed);
        assert_ops(&f, &[("BatchNorm", 0)]);
        match f.graph().count("Conv") {
            1 => assert_ops(&f, &[("Add", 0)]),
            2 => assert_refused(&f, "merge_add", &["conv1", "conv3"], ""),
            c => prop_assert!(false, "{} convs\n{}", c, f.summary()),
        }
    }
}

/// A sum of branches over two different inputs merges per input.
#[test]
fn add_over_two_inputs_merges_per_input() {
    let mut b = GraphBuilder::new(13);
    let x = b.input("x", &[2, 4, 6, 5]);
    let y = b.input("y", &[2, 3, 6, 5]);
    let a1 = b.conv_bn(&x, ConvSpec::same(5, 3, 1, 1));
    let b1 = b.conv_bn(&y, ConvSpec::same(5, 3, 1, 1));
    let a2 = b.conv_bn(&x, ConvSpec::same(5, 1, 1, 1));
    let b2 = b.conv_bn(&y, ConvSpec::kernel_hw(5, 1, 3, 1));
    let a3 = b.conv(&x, ConvSpec::kernel_hw(5, 3, 1, 1));
    let s = b.add_chain(&[a1, b1, a2, b2, a3]);
    b.output(&s);
    let (g, w) = b.finish();
    let f = fuse_checked(&g, &w, 13);
    assert_ops(&f, &[("Conv", 2), ("BatchNorm", 0), ("Add", 1)]);
}

// ---------------------------------------------------------------------------------
// Paradigm 5: 1x1 -> KxK and KxK -> 1x1 sequences, with groups.

/// 1x1 conv (+BN) carrying the padding, then a KxK (+BN) with pad 0: exact even with
/// the 1x1's bias, since the 1x1 maps the zero border to its bias.
fn one_then_k_padded_1x1(
    n: usize,
    cin: usize,
    extra_mid: usize,
    out_mul: usize,
    g: usize,
    k: usize,
    p: usize,
    stride: usize,
    dilation: usize,
    bias: [bool; 2],
    bn: [bool; 2],
    hw: [usize; 2],
    seed: u64,
) {
    // Channels that make fusing cheaper than the pair (cin <= mid, equal groups).
    let (cin, mid, out) = (cin * g, (cin + extra_mid) * g, out_mul * g);
    let (h, w) = (fit(hw[0], k, dilation, 2 * p), fit(hw[1], k, dilation, 2 * p));
    let mut b = GraphBuilder::new(seed);
    let x = b.input("x", &[n, cin, h, w]);
    let s1 = spec(mid, [1, 1], 1, [p; 4], 1, g, bias[0]);
    let t = if bn[0] { b.conv_bn(&x, s1) } else { b.conv(&x, s1) };
    let s2 = spec(out, [k, k], stride, [0; 4], dilation, g, bias[1]);
    let y = if bn[1] { b.conv_bn(&t, s2) } else { b.conv(&t, s2) };
    b.output(&y);
    let (gr, wt) = b.finish();
    let f = fuse_checked(&gr, &wt, seed);
    assert_ops(&f, &[("Conv", 1), ("BatchNorm", 0)]);
    assert_eq!(f.convs()[0].groups, g, "the coarsest exact groups, not dense\n{}", f.summary());
    assert_eq!(f.convs()[0].pads, [p; 4], "the padding moves to the fused conv");
}

/// A 1x1 without bias (and without BN) then a zero-padded KxK: exact, the border is 0
/// either way.
fn one_then_k_no_bias(
    n: usize,
    cin: usize,
    extra_mid: usize,
    out_mul: usize,
    g: usize,
    k: usize,
    pads: [usize; 4],
    stride: usize,
    dilation: usize,
    bias: bool,
    bn: bool,
    hw: [usize; 2],
    seed: u64,
) {
    let (cin, mid, out) = (cin * g, (cin + extra_mid) * g, out_mul * g);
    let h = fit(hw[0], k, dilation, pads[0] + pads[2]);
    let w = fit(hw[1], k, dilation, pads[1] + pads[3]);
    let mut b = GraphBuilder::new(seed);
    let x = b.input("x", &[n, cin, h, w]);
    let t = b.conv(&x, spec(mid, [1, 1], 1, [0; 4], 1, g, false));
    let s2 = spec(out, [k, k], stride, pads, dilation, g, bias);
    let y = if bn { b.conv_bn(&t, s2) } else { b.conv(&t, s2) };
    b.output(&y);
    let (gr, wt) = b.finish();
    let f = fuse_checked(&gr, &wt, seed);
    assert_ops(&f, &[("Conv", 1), ("BatchNorm", 0)]);
    assert_eq!(f.convs()[0].groups, g, "{}", f.summary());
}

/// KxK (+BN) then 1x1 (+BN): exact with any padding/stride/dilation on the KxK.
fn k_then_one(
    n: usize,
    cin: usize,
    mid_mul: usize,
    out_less: usize,
    g: usize,
    k: usize,
    pads: [usize; 4],
    stride: usize,
    dilation: usize,
    bias: [bool; 2],
    bn: [bool; 2],
    hw: [usize; 2],
    seed: u64,
) {
    // A strided 1x1 then a 1x1 is `one_x_one_strided_then_1x1_composes`.
    let stride = if k == 1 { 1 } else { stride };
    let mid = mid_mul * g;
    let out = (mid_mul - out_less.min(mid_mul - 1)) * g; // out <= mid: fusing is cheaper
    let cin = cin * g;
    let h = fit(hw[0], k, dilation, pads[0] + pads[2]);
    let w = fit(hw[1], k, dilation, pads[1] + pads[3]);
    let mut b = GraphBuilder::new(seed);
    let x = b.input("x", &[n, cin, h, w]);
    let s1 = spec(mid, [k, k], stride, pads, dilation, g, bias[0]);
    let t = if bn[0] { b.conv_bn(&x, s1) } else { b.conv(&x, s1) };
    let s2 = spec(out, [1, 1], 1, [0; 4], 1, g, bias[1]);
    let y = if bn[1] { b.conv_bn(&t, s2) } else { b.conv(&t, s2) };
    b.output(&y);
    let (gr, wt) = b.finish();
    let f = fuse_checked(&gr, &wt, seed);
    assert_ops(&f, &[("Conv", 1), ("BatchNorm", 0)]);
    assert_eq!(f.convs()[0].groups, g, "{}", f.summary());
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn p5_1x1_with_padding_then_unpadded_kxk_composes(
        n in 1usize..=3, cin in 1usize..=3, extra_mid in 0usize..=3, out_mul in 1usize..=3, g in 1usize..=2,
        k in 1usize..=4, p in 0usize..=2, stride in 1usize..=2, dilation in 1usize..=2,
        bias in any::<[bool; 2]>(), bn in any::<[bool; 2]>(), hw in (1usize..=12, 1usize..=12), seed in any::<u64>(),
    ) {
        one_then_k_padded_1x1(n, cin, extra_mid, out_mul, g, k, p, stride, dilation, bias, bn, [hw.0, hw.1], seed);
    }

    #[test]
    fn p5_bias_free_1x1_then_padded_kxk_composes(
        n in 1usize..=3, cin in 1usize..=3, extra_mid in 0usize..=3, out_mul in 1usize..=3, g in 1usize..=2,
        k in 1usize..=4, pads in (0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2), stride in 1usize..=2,
        dilation in 1usize..=2, bias in any::<bool>(), bn in any::<bool>(), hw in (1usize..=12, 1usize..=12), seed in any::<u64>(),
    ) {
        one_then_k_no_bias(n, cin, extra_mid, out_mul, g, k, [pads.0, pads.1, pads.2, pads.3], stride, dilation, bias, bn, [hw.0, hw.1], seed);
    }

    #[test]
    fn p5_kxk_then_1x1_composes(
        n in 1usize..=3, cin in 1usize..=4, mid_mul in 1usize..=4, out_less in 0usize..=3, g in 1usize..=2,
        k in 1usize..=4, pads in (0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2), stride in 1usize..=2,
        dilation in 1usize..=2, bias in any::<[bool; 2]>(), bn in any::<[bool; 2]>(), hw in (1usize..=12, 1usize..=12), seed in any::<u64>(),
    ) {
        k_then_one(n, cin, mid_mul, out_less, g, k, [pads.0, pads.1, pads.2, pads.3], stride, dilation, bias, bn, [hw.0, hw.1], seed);
    }

    /// Any channel and group counts: the result is always exact; the sequence is
    /// either one conv or left as two with a `compose_sequence` refusal giving why.
    #[test]
    fn p5_any_groups_is_exact_and_fused_or_refused(
        n in 1usize..=2, cin in 1usize..=8, mid in 1usize..=8, out in 1usize..=8, gi in (0usize..8, 0usize..8),
        k in 1usize..=3, kxk_first in any::<bool>(), p in 0usize..=1, stride in 1usize..=2,
        bias in any::<[bool; 2]>(), hw in (1usize..=10, 1usize..=10), seed in any::<u64>(),
    ) {
        let (g1, g2) = (divisor(gcd(cin, mid), gi.0), divisor(gcd(mid, out), gi.1));
        let (h, w) = (fit(hw.0, k, 1, 2 * p), fit(hw.1, k, 1, 2 * p));
        let mut b = GraphBuilder::new(seed);
        let x = b.input("x", &[n, cin, h, w]);
        let y = if kxk_first {
            let t = b.conv_bn(&x, spec(mid, [k, k], stride, [p; 4], 1, g1, bias[0]));
            b.conv_bn(&t, spec(out, [1, 1], 1, [0; 4], 1, g2, bias[1]))
        } else {
            let t = b.conv_bn(&x, spec(mid, [1, 1], 1, [p; 4], 1, g1, bias[0]));
            b.conv_bn(&t, spec(out, [k, k], stride, [0; 4], 1, g2, bias[1]))
        };
        b.output(&y);
        let (gr, wt) = b.finish();
        let f = fuse_checked(&gr, &wt, seed);
        assert_ops(&f, &[("BatchNorm", 0)]);
        match f.graph().count("Conv") {
            1 => {}
            2 => prop_assert!(!f.refusals("compose_sequence").is_empty(), "two convs left without a refusal\n{}", f.summary()),
            c => prop_assert!(false, "{} convs after fusing a two-conv sequence\n{}", c, f.summary()),
        }
    }
}

// ---------------------------------------------------------------------------------
// Paradigm 6a: identity shortcut `Add(conv(x), x)`, dense, grouped and depthwise.

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn p6a_identity_shortcut_merges_into_the_conv(
        n in 1usize..=3, c in 1usize..=8, kind in 0usize..3, gi in 0usize..8,
        k in prop_oneof![Just(1usize), Just(3), Just(5)], dilation in 1usize..=2,
        bias in any::<bool>(), bn in any::<bool>(), identity_first in any::<bool>(),
        hw in (1usize..=12, 1usize..=12), seed in any::<u64>(),
    ) {
        // dense, grouped (any divisor), depthwise
        let groups = [1, divisor(c, gi), c][kind];
        let mut b = GraphBuilder::new(seed);
        let x = b.input("x", &[n, c, hw.0, hw.1]);
        let s = spec(c, [k, k], 1, same_pads([k, k], dilation), dilation, groups, bias);
        let y = if bn { b.conv_bn(&x, s) } else { b.conv(&x, s) };
        let sum = if identity_first { b.add(&[x.clone(), y]) } else { b.add(&[y, x.clone()]) };
        b.output(&sum);
        let (g, wt) = b.finish();
        let f = fuse_checked(&g, &wt, seed);
        assert_ops(&f, &[("Conv", 1), ("BatchNorm", 0), ("Add", 0)]);
        prop_assert_eq!(f.convs()[0].groups, groups, "{}", f.summary());
    }
}

// ---------------------------------------------------------------------------------
// Paradigm 7: an average-pooling branch (count_include_pad=True, or no padding).

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn p7_avgpool_branch_merges_into_the_conv(
        n in 1usize..=3, c in 1usize..=8, gi in 0usize..8,
        k in prop_oneof![Just(1usize), Just(3), Just(5)], kp in prop_oneof![Just(1usize), Just(2), Just(3), Just(5)],
        stride in 1usize..=2, padded in any::<bool>(), count_include_pad in any::<bool>(),
        bn in any::<[bool; 2]>(), hw in (1usize..=12, 1usize..=12), seed in any::<u64>(),
    ) {
        let groups = divisor(c, gi);
        // Padded: centred windows with "same" padding (count_include_pad=True, the
        // exact case). Unpadded: equal window sizes, any count_include_pad.
        let centred = padded && kp % 2 == 1;
        let (k, pad, cip, conv_pads) = if centred { (k, kp / 2, true, same_pads([k, k], 1)) } else { (kp, 0, count_include_pad, [0; 4]) };
        let (h, w) = (fit(hw.0, k.max(kp), 1, 0), fit(hw.1, k.max(kp), 1, 0));
        let mut b = GraphBuilder::new(seed);
        let x = b.input("x", &[n, c, h, w]);
        let s = spec(c, [k, k], stride, conv_pads, 1, groups, false);
        let y = if bn[0] { b.conv_bn(&x, s) } else { b.conv(&x, s) };
        let p = b.avg_pool(&x, kp, stride, pad, cip);
        let p = if bn[1] { b.bn(&p) } else { p };
        let sum = b.add(&[y, p]);
        b.output(&sum);
        let (g, wt) = b.finish();
        let f = fuse_checked(&g, &wt, seed);
        assert_ops(&f, &[("Conv", 1), ("BatchNorm", 0), ("Add", 0), ("AvgPool", 0)]);
        prop_assert_eq!(f.convs()[0].groups, groups, "{}", f.summary());
    }
}

// ---------------------------------------------------------------------------------
// Paradigm 8: a BN-only branch next to an odd KxK conv (RepVGG / MobileOne identity).

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn p8_bn_branch_merges_for_odd_kernels_and_groups(
        n in 1usize..=3, c in 1usize..=8, kind in 0usize..3, gi in 0usize..8,
        k in prop_oneof![Just(1usize), Just(3), Just(5), Just(7)], dilation in 1usize..=2,
        with_1x1 in any::<bool>(), bias in any::<bool>(), bn_first in any::<bool>(),
        hw in (1usize..=12, 1usize..=12), seed in any::<u64>(),
    ) {
        let groups = [1, divisor(c, gi), c][kind];
        let mut b = GraphBuilder::new(seed);
        let x = b.input("x", &[n, c, hw.0, hw.1]);
        let mut outs = vec![b.conv_bn(&x, spec(c, [k, k], 1, same_pads([k, k], dilation), dilation, groups, bias))];
        if with_1x1 {
            outs.push(b.conv_bn(&x, spec(c, [1, 1], 1, [0; 4], 1, groups, false)));
        }
        let id = b.bn(&x);
        if bn_first { outs.insert(0, id) } else { outs.push(id) }
        let sum = b.add_chain(&outs);
        b.output(&sum);
        let (g, wt) = b.finish();
        let f = fuse_checked(&g, &wt, seed);
        assert_ops(&f, &[("Conv", 1), ("BatchNorm", 0), ("Add", 0)]);
        prop_assert_eq!(f.convs()[0].groups, groups, "{}", f.summary());
        prop_assert_eq!(f.convs()[0].kernel, [k, k]);
    }
}

// ---------------------------------------------------------------------------------
// Paradigm 9: after global pooling, `Flatten(conv1x1(g))` + `Linear(Flatten(g))` is
// one Linear.

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn p9_gap_conv1x1_and_linear_merge_into_one_linear(
        n in 1usize..=3, c in 1usize..=8, out in 1usize..=8, gi in 0usize..8,
        bias in any::<[bool; 2]>(), linear_first in any::<bool>(),
        hw in (1usize..=12, 1usize..=12), seed in any::<u64>(),
    ) {
        let groups = divisor(gcd(c, out), gi);
        let mut b = GraphBuilder::new(seed);
        let x = b.input("x", &[n, c, hw.0, hw.1]);
        let p = b.global_pool(&x);
        let conv = b.conv(&p, spec(out, [1, 1], 1, [0; 4], 1, groups, bias[0]));
        let a = b.flatten(&conv);
        let fl = b.flatten(&p);
        let l = b.linear(&fl, out, bias[1]);
        let sum = if linear_first { b.add(&[l, a]) } else { b.add(&[a, l]) };
        b.output(&sum);
        let (g, wt) = b.finish();
        let f = fuse_checked(&g, &wt, seed);
        assert_ops(&f, &[("Linear", 1), ("Conv", 0), ("Add", 0), ("Flatten", 1), ("GlobalAvgPool", 1)]);
    }

    /// Both directions of the free reshape exist (the seed defined `lc2pwconv` twice):
    /// a Linear run as a 1x1 conv on a 1x1 map, and a dense 1x1 conv run as a Linear.
    #[test]
    fn p9_linear_and_conv1x1_views_compute_the_same(
        n in 1usize..=3, fin in 1usize..=8, fout in 1usize..=8, bias in any::<bool>(), seed in any::<u64>(),
    ) {
        use repfuse::cpu::primitives::{conv1x1_to_linear, linear_to_conv1x1};
        use repfuse::graph::{Conv2d, Linear, Node};

        let mut b = GraphBuilder::new(seed);
        let x = b.input("x", &[n, fin, 1, 1]);
        let fl = b.flatten(&x);
        let y = b.linear(&fl, fout, bias);
        b.output(&y);
        let (lin_graph, lin_w) = b.finish();
        let l = linears(&lin_graph)[0].clone();

        // The same function as conv1x1 -> flatten, with the weight viewed as a kernel.
        let kernel = linear_to_conv1x1(lin_w.get(&l.weight).unwrap()).unwrap();
        prop_assert_eq!(kernel.shape(), &[fout, fin, 1, 1]);
        prop_assert!(kernel.shares_storage(lin_w.get(&l.weight).unwrap()), "the view copies nothing");
        let back = conv1x1_to_linear(&kernel).unwrap();
        prop_assert_eq!(back.shape(), &[fout, fin]);
        prop_assert_eq!(back.data(), lin_w.get(&l.weight).unwrap().data());

        let mut conv_graph = lin_graph.clone();
        let conv = Conv2d { weight: "k".into(), bias: l.bias.clone(), in_channels: fin, out_channels: fout, kernel: [1, 1], stride: [1, 1], pads: [0; 4], dilation: [1, 1], groups: 1 };
        conv_graph.params.insert("k".into(), vec![fout, fin, 1, 1]);
        conv_graph.nodes = vec![
            Node { name: "conv".into(), op: Op::Conv2d(conv), inputs: vec![x.clone()], outputs: vec!["c".into()] },
            Node { name: "flat".into(), op: Op::Flatten, inputs: vec!["c".into()], outputs: vec![y.clone()] },
        ];
        let mut conv_w = lin_w.clone();
        conv_w.insert("k", kernel);
        conv_graph.validate().unwrap();
        assert_equivalent(&lin_graph, &lin_w, &conv_graph, &conv_w, seed, "linear as conv1x1");

        // ...and back: the kernel viewed as a Linear weight.
        let mut lin2 = lin_graph.clone();
        lin2.params.insert("w2".into(), vec![fout, fin]);
        if let Op::Linear(Linear { weight, .. }) = &mut lin2.nodes.iter_mut().find(|n| matches!(n.op, Op::Linear(_))).unwrap().op {
            *weight = "w2".into();
        }
        let mut lin2_w = lin_w.clone();
        lin2_w.insert("w2", conv1x1_to_linear(conv_w.get("k").unwrap()).unwrap());
        assert_equivalent(&conv_graph, &conv_w, &lin2, &lin2_w, seed, "conv1x1 as linear");
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// Several 1x1 conv branches and a Linear on the pooled features: one Linear.
    #[test]
    fn p9_several_conv1x1_branches_and_a_linear_merge(
        n in 1usize..=3, c in 1usize..=6, out in 1usize..=6,
        convs in prop::collection::vec((0usize..8, any::<bool>()), 1..=3), hw in (1usize..=6, 1usize..=6), seed in any::<u64>(),
    ) {
        let mut b = GraphBuilder::new(seed);
        let x = b.input("x", &[n, c, hw.0, hw.1]);
        let p = b.global_pool(&x);
        let mut outs = vec![];
        for &(gi, bias) in &convs {
            let k = b.conv(&p, spec(out, [1, 1], 1, [0; 4], 1, divisor(gcd(c, out), gi), bias));
            outs.push(b.flatten(&k));
        }
        let fl = b.flatten(&p);
        outs.push(b.linear(&fl, out, true));
        let sum = b.add_chain(&outs);
        b.output(&sum);
        let (g, wt) = b.finish();
        let f = fuse_checked(&g, &wt, seed);
        assert_ops(&f, &[("Linear", 1), ("Conv", 0), ("Add", 0)]);
    }

    /// Linear branches summed, and Linear -> BN1d -> Linear: exact, one Linear (or two
    /// with a `compose_sequence` refusal when one Linear would cost more).
    #[test]
    fn p9_linear_sums_and_sequences(
        n in 1usize..=3, fin in 1usize..=8, mid in 1usize..=8, fout in 1usize..=8,
        branches in 2usize..=3, bias in any::<[bool; 2]>(), seed in any::<u64>(),
    ) {
        let mut b = GraphBuilder::new(seed);
        let x = b.input("x", &[n, fin]);
        let outs: Vec<String> = (0..branches).map(|i| b.linear(&x, mid, bias[0] || i == 0)).collect();
        let s = b.add(&outs);
        let t = b.bn(&s);
        let y = b.linear(&t, fout, bias[1]);
        b.output(&y);
        let (g, wt) = b.finish();
        let f = fuse_checked(&g, &wt, seed);
        assert_ops(&f, &[("Add", 0), ("BatchNorm", 0), ("Conv", 0)]);
        match f.graph().count("Linear") {
            1 => {}
            2 => prop_assert!(!f.refusals("compose_sequence").is_empty(), "{}", f.summary()),
            l => prop_assert!(false, "{} linears\n{}", l, f.summary()),
        }
    }
}

// ---------------------------------------------------------------------------------
// Fixed awkward shapes.

type Block = fn(&mut GraphBuilder, &str) -> String;

/// One awkward case: a block on an input shape, and the op counts after fusion.
struct Case {
    name: &'static str,
    input: [usize; 4],
    block: Block,
    expect: &'static [(&'static str, usize)],
}

#[test]
fn awkward_shapes_fuse_exactly() {
    const ONE_CONV: &[(&str, usize)] = &[("Conv", 1), ("BatchNorm", 0), ("Add", 0), ("AvgPool", 0), ("Concat", 0)];
    let cases: &[Case] = &[
        Case {
            name: "repvgg on a 1x1 map",
            input: [2, 4, 1, 1],
            block: |b, x| blocks::repvgg_block(b, x, 4, 1, 1),
            expect: &[("Conv", 1), ("BatchNorm", 0), ("Add", 0), ("Activation", 1)],
        },
        Case {
            name: "3x3 + 1x1 stride 2 on a 1x1 map",
            input: [1, 3, 1, 1],
            block: |b, x| blocks::repvgg_block(b, x, 5, 2, 1),
            expect: &[("Conv", 1), ("BatchNorm", 0), ("Add", 0)],
        },
        Case {
            name: "acnet 5 stride 2 on odd 15x15",
            input: [1, 3, 15, 15],
            block: |b, x| blocks::acnet_block(b, x, 4, 5, 2),
            expect: &[("Conv", 1), ("BatchNorm", 0), ("Add", 0)],
        },
        Case {
            name: "3x3 s2 + 1x1 s2 on odd 7x9, batch 3",
            input: [3, 4, 7, 9],
            block: |b, x| {
                let a = b.conv_bn(x, ConvSpec::same(6, 3, 2, 2));
                let c = b.conv_bn(x, ConvSpec::same(6, 1, 2, 1));
                b.add(&[a, c])
            },
            expect: ONE_CONV,
        },
        Case {
            name: "mobileone depthwise, groups = channels",
            input: [2, 6, 5, 5],
            block: |b, x| blocks::mobileone_block(b, x, 6, 3, 1, 6, 3),
            expect: &[("Conv", 1), ("BatchNorm", 0), ("Add", 0)],
        },
        Case {
            name: "grouped repvgg stride 2 on odd 9x7",
            input: [3, 4, 9, 7],
            block: |b, x| blocks::repvgg_block(b, x, 8, 2, 4),
            expect: &[("Conv", 1), ("BatchNorm", 0), ("Add", 0)],
        },
        Case {
            name: "3x3 dilation 2 + 5x5 + identity on 9x11",
            input: [1, 4, 9, 11],
            block: |b, x| {
                let a = b.conv_bn(x, ConvSpec::same(4, 3, 1, 1).dilated(2));
                let c = b.conv_bn(x, ConvSpec::same(4, 5, 1, 2));
                b.add(&[a, c, x.to_string()])
            },
            expect: ONE_CONV,
        },
        Case {
            name: "7x7 + 7x1 + 1x7 + BN on 8x13, batch 3",
            input: [3, 3, 8, 13],
            block: |b, x| {
                let a = b.conv_bn(x, ConvSpec::same(3, 7, 1, 1));
                let v = b.conv_bn(x, ConvSpec::kernel_hw(3, 7, 1, 1));
                let h = b.conv_bn(x, ConvSpec::kernel_hw(3, 1, 7, 1));
                let i = b.bn(x);
                b.add_chain(&[a, v, h, i])
            },
            expect: ONE_CONV,
        },
        Case {
            name: "7x1 on a 7x1 map with stride 2",
            input: [2, 2, 7, 1],
            block: |b, x| {
                let a = b.conv_bn(x, ConvSpec::kernel_hw(4, 7, 1, 2));
                let c = b.conv_bn(x, ConvSpec::kernel_hw(4, 3, 1, 2));
                b.add(&[a, c])
            },
            expect: ONE_CONV,
        },
        Case {
            name: "dbb on odd 11x9",
            input: [2, 3, 11, 9],
            block: |b, x| blocks::dbb_block(b, x, 5, 3, 1),
            expect: &[("Conv", 1), ("BatchNorm", 0), ("Add", 0), ("AvgPool", 0)],
        },
        Case {
            name: "dbb stride 2 on odd 15x15",
            input: [1, 4, 15, 15],
            block: |b, x| blocks::dbb_block(b, x, 4, 3, 2),
            expect: &[("Conv", 1), ("BatchNorm", 0), ("Add", 0), ("AvgPool", 0)],
        },
        Case { name: "replk 13 || 3 depthwise", input: [1, 4, 15, 15], block: |b, x| blocks::replk_block(b, x, 13, 3), expect: ONE_CONV },
        Case {
            name: "concat of grouped and depthwise on 1x1",
            input: [3, 4, 1, 1],
            block: |b, x| {
                let a = b.conv_bn(x, ConvSpec::same(4, 3, 1, 4));
                let c = b.conv_bn(x, ConvSpec::same(2, 1, 1, 2));
                let d = b.bn(x);
                b.concat(&[a, c, d])
            },
            expect: ONE_CONV,
        },
        Case {
            name: "concat of conv, avg-pool and BN branches on odd 5x7",
            input: [2, 3, 5, 7],
            block: |b, x| {
                let a = b.conv_bn(x, ConvSpec::same(4, 3, 1, 1));
                let p = b.avg_pool(x, 3, 1, 1, true);
                let d = b.bn(x);
                b.concat(&[a, p, d])
            },
            expect: ONE_CONV,
        },
        Case {
            name: "avg-pool 3 s2 count_include_pad on odd 9x9",
            input: [2, 3, 9, 9],
            block: |b, x| {
                let a = b.conv_bn(x, ConvSpec::same(3, 3, 2, 3));
                let p = b.avg_pool(x, 3, 2, 1, true);
                let p = b.bn(&p);
                b.add(&[p, a])
            },
            expect: ONE_CONV,
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let mut b = GraphBuilder::new(100 + i as u64);
        let x = b.input("x", &case.input);
        let y = (case.block)(&mut b, &x);
        b.output(&y);
        let (g, w) = b.finish();
        eprintln!("case `{}`", case.name);
        let f = fuse_checked(&g, &w, 7 + i as u64);
        let hist = f.graph().op_histogram();
        for (kind, n) in case.expect {
            assert_eq!(hist.get(*kind).copied().unwrap_or(0), *n, "case `{}`: {} count\n{}", case.name, kind, f.summary());
        }
    }
}

/// Fusing a fused graph changes nothing: the deploy form is a fixpoint.
#[test]
fn fused_graphs_are_a_fixpoint() {
    for (name, block) in [
        ("repvgg", (|b, x| blocks::repvgg_block(b, x, 4, 1, 2)) as Block),
        ("dbb", |b, x| blocks::dbb_block(b, x, 4, 3, 1)),
        ("acnet", |b, x| blocks::acnet_block(b, x, 4, 3, 2)),
    ] {
        let mut b = GraphBuilder::new(5);
        let x = b.input("x", &[2, 4, 6, 5]);
        let y = block(&mut b, &x);
        b.output(&y);
        let (g, w) = b.finish();
        let once = fuse_checked(&g, &w, 1);
        let twice = fuse_checked(once.graph(), &once.weights, 2);
        assert_eq!(twice.graph(), once.graph(), "{}: a second fuse rewrote the deploy graph\n{}", name, twice.summary());
        assert!(twice.fusion.plan.steps.is_empty(), "{}: a second fuse planned work", name);
    }
}

/// An identity shortcut around a conv that reads the output of another conv (no
/// activation in between): `y = conv0(x); Add(conv1(y), y)` is `conv0` then one conv.
#[test]
fn identity_shortcut_after_an_activation_merges() {
    let mut b = GraphBuilder::new(11);
    let x = b.input("x", &[2, 4, 6, 6]);
    let y = b.conv_bn(&x, ConvSpec::same(4, 3, 1, 1));
    let y = b.relu(&y);
    let z = b.conv_bn(&y, ConvSpec::same(4, 3, 1, 1));
    let s = b.add(&[z, y]);
    b.output(&s);
    let (g, w) = b.finish();
    let f = fuse_checked(&g, &w, 3);
    assert_ops(&f, &[("Conv", 2), ("Add", 0), ("BatchNorm", 0)]);
}

#[test]
fn identity_shortcut_on_a_conv_output_merges() {
    let mut b = GraphBuilder::new(11);
    let x = b.input("x", &[2, 4, 6, 6]);
    let y = b.conv_bn(&x, ConvSpec::same(4, 3, 1, 1));
    let z = b.conv_bn(&y, ConvSpec::same(4, 3, 1, 1));
    let s = b.add(&[z, y]);
    b.output(&s);
    let (g, w) = b.finish();
    let f = fuse_checked(&g, &w, 3);
    assert_ops(&f, &[("Conv", 2), ("Add", 0), ("BatchNorm", 0)]);
}

/// A strided 1x1 then a 1x1 is one strided 1x1 (the KxK -> 1x1 form with K = 1).
#[test]
fn one_x_one_strided_then_1x1_composes() {
    let mut b = GraphBuilder::new(12);
    let x = b.input("x", &[2, 4, 7, 6]);
    let t = b.conv_bn(&x, ConvSpec::same(6, 1, 2, 1));
    let y = b.conv_bn(&t, ConvSpec::same(4, 1, 1, 1));
    b.output(&y);
    let (g, w) = b.finish();
    let f = fuse_checked(&g, &w, 4);
    assert_ops(&f, &[("Conv", 1), ("BatchNorm", 0)]);
    assert!(f.refusals("compose_sequence").is_empty(), "{}", f.summary());
}

/// Declutter rules fire only where they enable a merge or a composition (branch.rs):
/// an avg-pool after a KxK conv cannot compose with it (neither is 1x1), so it should
/// stay a pool rather than become a depthwise conv.
#[test]
fn avgpool_after_a_kxk_conv_stays_a_pool() {
    let mut b = GraphBuilder::new(14);
    let x = b.input("x", &[2, 4, 6, 6]);
    let a = b.conv_bn(&x, ConvSpec::same(4, 3, 1, 1));
    let p = b.avg_pool(&a, 2, 2, 0, true);
    b.output(&p);
    let (g, w) = b.finish();
    let f = fuse_checked(&g, &w, 14);
    assert_ops(&f, &[("Conv", 1), ("AvgPool", 1), ("BatchNorm", 0)]);
}

//! Fusion never mutates its inputs (the seed's `branch_add` added into the first
//! branch's tensor in place and destroyed it): every primitive leaves its operands
//! bit-identical, `fuse` leaves the graph equal to a clone taken before, the plan
//! executor leaves the source weights bit-identical, and untouched parameters are
//! shared with the source, not copied.

mod common;
use common::fusion as support;

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use repfuse::cpu::primitives::{self, BnTensors, ChannelMap, ComposeInput, PlaceInput};
use repfuse::graph::Conv2d;
use repfuse::zoo::{blocks, ConvSpec, GraphBuilder};
use repfuse::{fuse, FuseOptions, Graph, Tensor, Weights};
use support::*;

/// Shape and exact bits of a tensor.
fn bits(t: &Tensor) -> (Vec<usize>, Vec<u32>) {
    (t.shape().to_vec(), t.data().iter().map(|v| v.to_bits()).collect())
}

fn snapshot(w: &Weights) -> BTreeMap<String, (Vec<usize>, Vec<u32>)> {
    w.iter().map(|(k, t)| (k.clone(), bits(t))).collect()
}

fn random(rng: &mut StdRng, shape: Vec<usize>, lo: f32, hi: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::new("t", shape, (0..n).map(|_| rng.random_range(lo..hi)).collect()).unwrap()
}

/// Runs `f` and asserts every tensor in `inputs` is bit-identical afterwards.
fn unchanged<R>(what: &str, inputs: &[&Tensor], f: impl FnOnce() -> R) -> R {
    let before: Vec<_> = inputs.iter().map(|t| bits(t)).collect();
    let r = f();
    for (i, (t, b)) in inputs.iter().zip(&before).enumerate() {
        assert_eq!(&bits(t), b, "{} changed its input #{}", what, i);
    }
    r
}

proptest! {
    #![proptest_config(config(24))]

    #[test]
    fn primitives_leave_their_inputs_bit_identical(
        o in 1usize..=6, c in 1usize..=6, gi in (0usize..6, 0usize..6), k in (1usize..=3, 1usize..=3), seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let g = divisor(gcd(o, c), gi.0);
        let kernel = random(&mut rng, vec![o, c / g, k.0, k.1], -1.0, 1.0);
        let bias = random(&mut rng, vec![o], -1.0, 1.0);
        let bn = [random(&mut rng, vec![o], 0.5, 1.5), random(&mut rng, vec![o], -0.5, 0.5), random(&mut rng, vec![o], -0.5, 0.5), random(&mut rng, vec![o], 0.5, 2.0)];
        let bnt = BnTensors { gamma: &bn[0], beta: &bn[1], mean: &bn[2], var: &bn[3], eps: 1e-5 };
        let all_bn: Vec<&Tensor> = bn.iter().collect();

        // fold_bn: kernel, bias and the four statistics.
        let mut ins = vec![&kernel, &bias];
        ins.extend(&all_bn);
        let (k2, b2) = unchanged("fold_bn", &ins, || primitives::fold_bn(&kernel, Some(&bias), &bnt).unwrap());
        prop_assert!(!k2.shares_storage(&kernel) && !b2.shares_storage(&bias), "fold_bn returns new tensors");
        unchanged("fold_bn without bias", &ins, || primitives::fold_bn(&kernel, None, &bnt).unwrap());

        // bn_to_conv
        unchanged("bn_to_conv", &all_bn, || primitives::bn_to_conv(&bnt, o).unwrap());

        // place: the branch-add the seed did in place. Two same-shape sources summed
        // into a destination of their own shape, one source grouped, one dense, plus a
        // centred smaller kernel.
        let dense = random(&mut rng, vec![o, c, k.0, k.1], -1.0, 1.0);
        let small = random(&mut rng, vec![o, c, 1, 1], -1.0, 1.0);
        let bias2 = random(&mut rng, vec![o], -1.0, 1.0);
        let sources = [
            PlaceInput { kernel: &kernel, bias: Some(&bias), groups: g, offset: [0, 0], step: [1, 1], out_offset: 0, map: ChannelMap::IDENTITY, bn: None },
            PlaceInput { kernel: &dense, bias: Some(&bias2), groups: 1, offset: [0, 0], step: [1, 1], out_offset: 0, map: ChannelMap::IDENTITY, bn: None },
            PlaceInput { kernel: &small, bias: None, groups: 1, offset: [k.0 / 2, k.1 / 2], step: [1, 1], out_offset: 0, map: ChannelMap::IDENTITY, bn: None },
        ];
        let (sum, sum_b) = unchanged("place", &[&kernel, &bias, &dense, &small, &bias2], || primitives::place(&[o, c, k.0, k.1], 1, c, &sources).unwrap());
        prop_assert!(!sum.shares_storage(&kernel) && !sum.shares_storage(&dense));
        prop_assert!(!sum_b.unwrap().shares_storage(&bias));
        // concat form: stacked on output channels
        let stacked = [
            PlaceInput { kernel: &kernel, bias: None, groups: g, offset: [0, 0], step: [1, 1], out_offset: 0, map: ChannelMap::IDENTITY, bn: None },
            PlaceInput { kernel: &dense, bias: Some(&bias2), groups: 1, offset: [0, 0], step: [1, 1], out_offset: o, map: ChannelMap::IDENTITY, bn: None },
        ];
        unchanged("place (stacked)", &[&kernel, &dense, &bias2], || primitives::place(&[2 * o, c, k.0, k.1], 1, c, &stacked).unwrap());

        // compose: KxK (grouped) then 1x1, and 1x1 then KxK, biases carried through.
        let g2 = divisor(gcd(o, c), gi.1);
        let pw = random(&mut rng, vec![c, o / g2, 1, 1], -1.0, 1.0);
        let pw_b = random(&mut rng, vec![c], -1.0, 1.0);
        let first = ComposeInput { kernel: &kernel, bias: Some(&bias), groups: g };
        let second = ComposeInput { kernel: &pw, bias: Some(&pw_b), groups: g2 };
        unchanged("compose kxk->1x1", &[&kernel, &bias, &pw, &pw_b], || primitives::compose(&first, &second, c, 1).unwrap());
        let pw1 = random(&mut rng, vec![o, c, 1, 1], -1.0, 1.0);
        let kk = random(&mut rng, vec![c, o, k.0, k.1], -1.0, 1.0);
        let first = ComposeInput { kernel: &pw1, bias: Some(&bias), groups: 1 };
        let second = ComposeInput { kernel: &kk, bias: None, groups: 1 };
        unchanged("compose 1x1->kxk", &[&pw1, &bias, &kk], || primitives::compose(&first, &second, c, 1).unwrap());

        // The free reshapes are views: shared storage, input unchanged.
        let lin = random(&mut rng, vec![o, c], -1.0, 1.0);
        let view = unchanged("linear_to_conv1x1", &[&lin], || primitives::linear_to_conv1x1(&lin).unwrap());
        prop_assert!(view.shares_storage(&lin));
        let back = unchanged("conv1x1_to_linear", &[&view], || primitives::conv1x1_to_linear(&view).unwrap());
        prop_assert!(back.shares_storage(&lin));
        prop_assert_eq!(bits(&back), bits(&lin));

        // The fills take no tensors; two calls give two independent tensors.
        let d1 = primitives::dirac(c, 1, [3, 3]).unwrap();
        let d2 = primitives::dirac(c, 1, [3, 3]).unwrap();
        prop_assert!(!d1.shares_storage(&d2));
        prop_assert_eq!(bits(&d1), bits(&d2));
        let a1 = primitives::avgpool_kernel(c, [k.0, k.1]);
        prop_assert!(!a1.shares_storage(&primitives::avgpool_kernel(c, [k.0, k.1])));

        // The reference conv.
        let x = random(&mut rng, vec![2, c, 5, 4], -1.0, 1.0);
        let conv = Conv2d { weight: "w".into(), bias: Some("b".into()), in_channels: c, out_channels: o, kernel: [k.0, k.1], stride: [1, 1], pads: [k.0 / 2, k.1 / 2, k.0 / 2, k.1 / 2], dilation: [1, 1], groups: g };
        unchanged("conv2d", &[&x, &kernel, &bias], || repfuse::cpu::conv2d("conv", &x, &kernel, Some(&bias), &conv).unwrap());
    }
}

/// Small training-form graphs covering every rule, and a few zoo models.
fn graphs() -> Vec<(String, Graph, Weights)> {
    type Block = fn(&mut GraphBuilder, &str) -> String;
    let cases: &[(&str, Block)] = &[
        ("repvgg", |b, x| blocks::repvgg_block(b, x, 6, 1, 2)),
        ("acnet", |b, x| blocks::acnet_block(b, x, 5, 3, 2)),
        ("dbb", |b, x| blocks::dbb_block(b, x, 6, 3, 1)),
        ("mobileone", |b, x| blocks::mobileone_block(b, x, 6, 3, 1, 6, 3)),
        ("repnext", blocks::repnext_block),
        ("concat+identity+bn-next+gap-linear", |b, x| {
            let a = b.conv_bn(x, ConvSpec::same(4, 3, 1, 2));
            let c = b.conv_bn(x, ConvSpec::same(2, 1, 1, 1));
            let cat = b.concat(&[a, c]);
            let k = b.conv(&cat, ConvSpec::same(6, 3, 1, 1));
            let s = b.add(&[k, cat]);
            let t = b.bn(&s);
            let t = b.conv(&t, ConvSpec::same(8, 1, 1, 1));
            let p = b.global_pool(&t);
            let f1 = b.conv(&p, ConvSpec::same(10, 1, 1, 2).with_bias());
            let f1 = b.flatten(&f1);
            let f = b.flatten(&p);
            let l = b.linear(&f, 10, true);
            let l = b.add(&[f1, l]);
            b.bn(&l)
        }),
    ];
    let mut out = vec![];
    for (i, (name, block)) in cases.iter().enumerate() {
        let mut b = GraphBuilder::new(20 + i as u64);
        let x = b.input("x", &[2, 6, 7, 6]);
        let y = block(&mut b, &x);
        b.output(&y);
        let (g, w) = b.finish();
        out.push((name.to_string(), g, w));
    }
    for name in ["acnet", "dbb", "repnext", "mobileone_s0"] {
        let (g, w, _) = repfuse::zoo::build(name, 1, 32, 3).unwrap();
        out.push((format!("zoo {}", name), g, w));
    }
    out
}

#[test]
fn fuse_and_weights_cpu_leave_graph_and_weights_unchanged() {
    for (name, g, w) in graphs() {
        let g_before = g.clone();
        let w_before = snapshot(&w);
        let f = fuse(&g, &FuseOptions::default()).unwrap();
        assert_eq!(g, g_before, "{}: fuse changed its input graph", name);
        assert!(!f.plan.steps.is_empty(), "{}: something fuses", name);

        let fw = f.weights_cpu(&w).unwrap();
        assert_eq!(snapshot(&w), w_before, "{}: weights_cpu changed the source weights", name);
        // Run it again: same result, sources still unchanged (nothing was consumed).
        let fw2 = f.weights_cpu(&w).unwrap();
        assert_eq!(snapshot(&fw), snapshot(&fw2), "{}: weights_cpu is not deterministic", name);
        assert_eq!(snapshot(&w), w_before, "{}: second weights_cpu changed the source", name);

        // The CPU reference forward also leaves its weights and inputs alone.
        let inputs = repfuse::verify::random_inputs(&g, 1);
        let inputs_before: HashMap<_, _> = inputs.iter().map(|(k, t)| (k.clone(), bits(t))).collect();
        let fused_before = snapshot(&fw);
        if name.starts_with("zoo") {
            continue; // the forward of whole models is the zoo tests' job
        }
        repfuse::cpu::forward(&f.graph, &fw, &inputs).unwrap();
        repfuse::cpu::forward(&g, &w, &inputs).unwrap();
        assert_eq!(snapshot(&fw), fused_before, "{}: forward changed the fused weights", name);
        assert_eq!(snapshot(&w), w_before, "{}: forward changed the source weights", name);
        let inputs_after: HashMap<_, _> = inputs.iter().map(|(k, t)| (k.clone(), bits(t))).collect();
        assert_eq!(inputs_after, inputs_before, "{}: forward changed its inputs", name);
    }
}

#[test]
fn untouched_params_share_storage_with_the_source() {
    for (name, g, w) in graphs() {
        let f = fuse(&g, &FuseOptions::default()).unwrap();
        let fw = f.weights_cpu(&w).unwrap();
        let computed: std::collections::BTreeSet<&str> = f.plan.steps.iter().flat_map(|s| s.outputs()).collect();
        let mut shared = 0;
        for (param, t) in fw.iter() {
            if computed.contains(param.as_str()) {
                continue;
            }
            let src = w.get(param).unwrap_or_else(|_| panic!("{}: `{}` is neither computed nor a source weight", name, param));
            assert!(t.shares_storage(src), "{}: untouched `{}` was copied", name, param);
            shared += 1;
        }
        // Every deploy param is there, and nothing else.
        // As sets: the weights are ordered by name, the graph's params by insertion.
        let names: std::collections::BTreeSet<&String> = fw.iter().map(|(k, _)| k).collect();
        let params: std::collections::BTreeSet<&String> = f.graph.params.keys().collect();
        assert_eq!(names, params, "{}: deploy weights do not match the deploy graph's params", name);
        if name == "repnext" || name == "zoo repnext" {
            assert!(shared > 0, "{}: expected untouched params (pointwise convs / head)", name);
        }
    }
}

/// A param no rule touches, in a graph where its neighbours fuse.
#[test]
fn an_untouched_conv_next_to_fused_ones_keeps_its_tensors() {
    let mut b = GraphBuilder::new(30);
    let x = b.input("x", &[1, 3, 6, 6]);
    let a = b.conv_bn(&x, ConvSpec::same(4, 3, 1, 1));
    let r = b.relu(&a);
    let k = b.conv(&r, ConvSpec::same(5, 3, 2, 1).with_bias()); // conv4: no partner
    b.output(&k);
    let (g, w) = b.finish();
    let f = fuse_checked(&g, &w, 30);
    for p in ["conv4.weight", "conv4.bias"] {
        assert!(f.weights.get(p).unwrap().shares_storage(w.get(p).unwrap()), "`{}` was copied", p);
    }
    assert!(!f.weights.contains("bn2.weight"), "folded BN params are not in the deploy weights");
}

//! The GPU engine against the CPU reference: plan primitives batched over whole
//! networks, and the forward pass of original and fused graphs.

mod common;

use repfuse::gpu::{ConvKernel, GpuContext, PlaceShape};
use repfuse::verify::{compare, random_inputs, Tolerance};
use repfuse::zoo::{blocks, ConvSpec, GraphBuilder};
use repfuse::{fuse, FuseOptions};

/// Fused weights from the GPU executor equal the CPU reference's. Both compute the
/// same few-term sums; the GPU sums in f32 and the CPU in f64, so the single-conv
/// tolerance applies.
fn assert_plan_matches_with(name: &str, g: &repfuse::Graph, w: &repfuse::Weights, opts: &FuseOptions) {
    assert_plan_matches_on(common::gpu(), name, g, w, opts)
}

fn assert_plan_matches_on(ctx: &GpuContext, name: &str, g: &repfuse::Graph, w: &repfuse::Weights, opts: &FuseOptions) {
    let f = fuse(g, opts).unwrap();
    let cpu = repfuse::cpu::execute_plan(&f.plan, w).unwrap();
    let gpu = repfuse::gpu::execute_plan_gpu(ctx, &f.plan, w).unwrap();
    assert_eq!(cpu.len(), gpu.len(), "{}: same tensors computed", name);
    assert!(!cpu.is_empty(), "{}: the plan computes something", name);
    for (k, t) in &cpu {
        let s = compare(&gpu[k], t, Tolerance::f32_sums(16)).unwrap();
        assert!(s.passed(), "{}: tensor {} differs: {:?}", name, k, s);
    }
}

#[test]
fn gpu_plan_primitives_match_cpu_on_every_zoo_block() {
    // Each block exercises primitives: repvgg (fold_bn, bn_to_conv, place with group
    // expansion), dbb (avgpool fill, compose 1x1->KxK), mobileone (depthwise groups),
    // acnet (asymmetric place), identity (dirac), grouped repvgg (grouped place).
    type Block = fn(&mut GraphBuilder, &str) -> String;
    let cases: &[(&str, Block)] = &[
        ("repvgg", |b, x| blocks::repvgg_block(b, x, 6, 1, 1)),
        ("repvgg_g2_s2", |b, x| blocks::repvgg_block(b, x, 6, 2, 2)),
        ("dbb", |b, x| blocks::dbb_block(b, x, 5, 3, 1)),
        ("mobileone_dw", |b, x| blocks::mobileone_block(b, x, 6, 3, 1, 6, 3)),
        ("acnet", |b, x| blocks::acnet_block(b, x, 7, 3, 2)),
        ("identity", |b, x| {
            let c = b.conv_bn(x, ConvSpec::same(6, 3, 1, 1));
            b.add(&[c, x.to_string()])
        }),
        // 40 branches: more sources than `place`'s register sum looks at (the first
        // 32), so later ones add to what it wrote; 1x1, 3x3, 1x3 and dilated taps mixed.
        ("forty_branches", |b, x| {
            let specs = [ConvSpec::same(6, 1, 1, 1), ConvSpec::same(6, 3, 1, 1), ConvSpec::kernel_hw(6, 1, 3, 1), ConvSpec::same(6, 3, 1, 1)];
            let ys: Vec<String> = (0..40).map(|i| b.conv_bn(x, specs[i % 4])).collect();
            b.add(&ys)
        }),
        // Two parallel 3x3 branches (summed in registers as a pair), a 1x1 scale
        // branch and an identity, dense.
        ("mobileone_k2", |b, x| blocks::mobileone_block(b, x, 6, 3, 1, 1, 2)),
        // Depthwise rows of a few taps each: many tiny rows per job.
        ("depthwise_many_rows", |b, x| blocks::mobileone_block(b, x, 6, 5, 1, 6, 4)),
        // Rows of 40 input channels: whole teams of a GPU's 32 lanes, some lanes
        // owning two channels (3x3 runs, a 1x1 source, an identity's Dirac).
        ("wide_rows", |b, x| {
            let c = b.conv_bn(x, ConvSpec::same(40, 1, 1, 1));
            blocks::repvgg_block(b, &c, 40, 1, 1)
        }),
        // Rows of 8 input channels start 16-byte aligned and are a whole number of
        // vec4s: `place` sums 4, 2 and 3 pointwise or 3x3 branches four elements
        // per access (the 6-channel cases above take its element-wise path).
        ("aligned_rows", |b, x| {
            let c = b.conv_bn(x, ConvSpec::same(8, 1, 1, 1));
            let c = blocks::mobileone_block(b, &c, 8, 1, 1, 1, 4);
            let c = blocks::mobileone_block(b, &c, 8, 1, 1, 1, 2);
            blocks::mobileone_block(b, &c, 8, 3, 1, 1, 3)
        }),
        // A BN folded into the 1x1 conv after it: a diagonal (one mid channel per
        // input channel) composed with a dense and with a grouped 1x1 conv, and a
        // grouped 1x1 then 3x3 (several mids per group): `compose` sums only the
        // mids that read the element's input channel and feed its output channel.
        ("bn_then_1x1", |b, x| {
            let t = b.bn(x);
            let t = b.conv(&t, ConvSpec::same(8, 1, 1, 1));
            let t = b.bn(&t);
            b.conv(&t, ConvSpec::same(4, 1, 1, 2))
        }),
        // A batch norm before a dense 1x1, a two-group 1x1 and an unpadded 3x3:
        // `compose`'s diagonal path (the second kernel with input channels scaled),
        // rows of 8, 4 and 8 * 9.
        ("diagonal_first", |b, x| {
            let c = b.conv_bn(x, ConvSpec::same(8, 1, 1, 1));
            let c = b.relu(&c);
            let t = b.bn(&c);
            let t = b.conv(&t, ConvSpec::same(12, 1, 1, 1));
            let t = b.relu(&t);
            let t = b.bn(&t);
            let t = b.conv(&t, ConvSpec::same(12, 1, 1, 3));
            let t = b.relu(&t);
            let t = b.conv_bn(&t, ConvSpec::same(8, 1, 1, 1));
            let t = b.relu(&t);
            let t = b.bn(&t);
            b.conv(&t, ConvSpec::same(8, 3, 1, 1).pad(0))
        }),
        ("seq_grouped_1x1_kxk", |b, x| {
            let c = b.conv_bn(x, ConvSpec::same(12, 1, 1, 3));
            b.conv_bn(&c, ConvSpec::same(6, 3, 1, 3))
        }),
        ("seq_kxk_1x1", |b, x| {
            let c = b.conv_bn(x, ConvSpec::same(4, 3, 1, 2));
            b.conv_bn(&c, ConvSpec::same(8, 1, 1, 1))
        }),
        // Channel counts in fours: `compose` works in 4x4 tiles of (output, input)
        // channels, dense and two groups, 1x1 first and KxK first. The ReLU keeps the
        // leading 3x3 (which brings 8 channels) out of the composition; a padded 1x1
        // before an unpadded KxK (DBB's form) is what composes exactly.
        ("tiled_1x1_kxk", |b, x| {
            let c = b.conv_bn(x, ConvSpec::same(8, 3, 1, 1));
            let c = b.relu(&c);
            let t = b.conv_bn(&c, ConvSpec::same(12, 1, 1, 1).pad(1));
            b.conv_bn(&t, ConvSpec::same(8, 3, 1, 1).pad(0))
        }),
        ("tiled_grouped_1x1_kxk", |b, x| {
            let c = b.conv_bn(x, ConvSpec::same(8, 3, 1, 1));
            let c = b.relu(&c);
            let t = b.conv_bn(&c, ConvSpec::same(16, 1, 1, 2).pad(1));
            b.conv_bn(&t, ConvSpec::same(8, 3, 1, 2).pad(0))
        }),
        // `fold_bn` (a conv+BN that feeds no `place`) per row, per element and per
        // vec4: rows of 6 (a 1x1 over six channels), of 81 (nine input channels of a
        // 3x3: longer than its 64-element row path, not a whole number of vec4s) and
        // of 36 (four channels' 3x3).
        ("fold_bn_row_paths", |b, x| {
            let c = b.conv_bn(x, ConvSpec::same(9, 1, 1, 1));
            let c = b.relu(&c);
            let c = b.conv_bn(&c, ConvSpec::same(4, 3, 1, 1));
            let c = b.relu(&c);
            b.conv_bn(&c, ConvSpec::same(4, 3, 1, 1))
        }),
        // `place` takes 1x1 sources at the centre into its register sum of a wider
        // kernel, at most two: a 5x5 (tap 12) with a dense 1x1, a two-group 1x1
        // (half the row each) and an identity, the third left to the later loop
        // (so the slice is not the invocation's alone); then a 3x3 whose 1x3
        // branch is left to it; then one whose every source is taken (vec4 stores).
        ("centre_taps", |b, x| {
            let c = b.conv_bn(x, ConvSpec::same(8, 1, 1, 1));
            let c = b.relu(&c);
            let ys =
                [b.conv_bn(&c, ConvSpec::same(8, 5, 1, 1)), b.conv_bn(&c, ConvSpec::same(8, 1, 1, 1)), b.conv_bn(&c, ConvSpec::same(8, 1, 1, 2)), b.bn(&c)];
            let c = b.add(&ys);
            let c = b.relu(&c);
            let ys = [b.conv_bn(&c, ConvSpec::same(8, 3, 1, 1)), b.conv_bn(&c, ConvSpec::same(8, 1, 1, 2)), b.conv_bn(&c, ConvSpec::kernel_hw(8, 1, 3, 1))];
            let c = b.add(&ys);
            let c = b.relu(&c);
            blocks::repvgg_block(b, &c, 8, 1, 1)
        }),
        ("tiled_kxk_1x1", |b, x| {
            let c = b.conv_bn(x, ConvSpec::same(8, 3, 1, 1));
            let c = b.relu(&c);
            let t = b.conv_bn(&c, ConvSpec::same(12, 3, 1, 1));
            b.conv_bn(&t, ConvSpec::same(8, 1, 1, 1))
        }),
    ];
    // `place` as this adapter runs it, as a GPU does (teams of 32 lanes), in slices
    // short enough that every row is split across invocations (alone, and 1x1 rows
    // in teams of 2), in mid-sized slices whose 3x3 rows are split across teams of 4
    // lanes owning 1 or 2 channels each, and alone in slices of four 3x3 channels
    // (the register sum's groups of four, in slices that start inside a row).
    common::gpu();
    let shape = |run, lanes| GpuContext::new().unwrap().with_place_shape(PlaceShape::checked(run, lanes).unwrap());
    let contexts = [GpuContext::new().unwrap(), shape(1024, 32), shape(4, 1), shape(4, 2), shape(64, 4), shape(36, 1)];
    for ctx in &contexts {
        for (name, block) in cases {
            let mut b = GraphBuilder::new(3);
            let x = b.input("x", &[2, 6, 9, 7]);
            let y = block(&mut b, &x);
            b.output(&y);
            let (g, w) = b.finish();
            assert_plan_matches_on(ctx, &format!("{} (place {:?})", name, ctx.place_shape()), &g, &w, &FuseOptions::default());
        }
    }
}

#[test]
fn gpu_widened_shortcuts_place_with_channel_maps_like_the_cpu() {
    // Widening interleaves and scales channels (`place` channel maps with strides
    // other than 1), which no default-option block does.
    let mut b = GraphBuilder::new(8);
    let x = b.input("x", &[1, 8, 7, 7]);
    let y = blocks::repnext_block(&mut b, &x);
    b.output(&y);
    let (g, w) = b.finish();
    let opts = FuseOptions { widen_shortcuts: true, ..Default::default() };
    let f = fuse(&g, &opts).unwrap();
    let mapped = f
        .plan
        .steps
        .iter()
        .any(|s| matches!(s, repfuse::plan::Step::Place { sources, .. } if sources.iter().any(|p| p.map.in_stride != 1 || p.map.out_stride != 1)));
    assert!(mapped, "the case must exercise channel maps: {:?}", f.report.fused);
    assert_plan_matches_with("widened repnext", &g, &w, &opts);
}

#[test]
fn gpu_forward_original_and_fused_on_gpu_match_cpu_reference() {
    let ctx = common::gpu();
    for model in ["dbb", "acnet", "repnext"] {
        let (g, w, _) = repfuse::zoo::build(model, 1, 32, 5).unwrap();
        let f = fuse(&g, &FuseOptions::default()).unwrap();
        let fw = repfuse::gpu::execute_plan_gpu(ctx, &f.plan, &w).map(|c| f.assemble_weights(&w, &c)).unwrap().unwrap();
        let inputs = random_inputs(&g, 9);
        let reference = repfuse::cpu::forward(&g, &w, &inputs).unwrap();
        let tol = Tolerance::for_graph(&g);
        for (graph, weights, what) in [(&g, &w, "original"), (&f.graph, &fw, "fused")] {
            let out = repfuse::gpu::forward_gpu(ctx, graph, weights, &inputs).unwrap();
            for (k, r) in &reference {
                let s = compare(&out[k], r, tol).unwrap();
                assert!(s.passed(), "{} {} on GPU vs CPU reference: {:?}", model, what, s);
            }
        }
    }
}

fn repvgg_chain(blocks_n: usize) -> (repfuse::Graph, repfuse::Weights) {
    let mut b = GraphBuilder::new(1);
    let mut t = b.input("x", &[1, 4, 6, 6]);
    for _ in 0..blocks_n {
        t = blocks::repvgg_block(&mut b, &t, 4, 1, 1);
    }
    b.output(&t);
    b.finish()
}

#[test]
fn gpu_plan_submissions_do_not_grow_with_depth() {
    common::gpu();
    // Its own context: the shared one's counter also sees other tests' submissions.
    let ctx = &repfuse::gpu::GpuContext::new().unwrap();
    let mut counts = vec![];
    for n in [4, 64] {
        let (g, w) = repvgg_chain(n);
        let f = fuse(&g, &FuseOptions::default()).unwrap();
        assert_eq!(f.graph.count("Conv"), n);
        let before = ctx.submissions();
        repfuse::gpu::execute_plan_gpu(ctx, &f.plan, &w).unwrap();
        counts.push(ctx.submissions() - before);
    }
    assert_eq!(counts[0], counts[1], "submissions for 4 vs 64 blocks: {:?}", counts);
    assert_eq!(counts[0], 1);
}

#[test]
fn gpu_a_plan_larger_than_one_storage_binding_fuses_on_the_gpu() {
    common::gpu();
    let ctx = &repfuse::gpu::GpuContext::new().unwrap();
    // 9 RepVGG blocks at 512 channels: ~190 MB of source and fused weights, more than
    // lavapipe's 128 MiB per storage binding, so the plan must be split into windows.
    let mut b = GraphBuilder::new(8);
    let mut t = b.input("x", &[1, 512, 3, 3]);
    for _ in 0..9 {
        t = blocks::repvgg_block(&mut b, &t, 512, 1, 1);
    }
    b.output(&t);
    let (g, w) = b.finish();
    let f = fuse(&g, &FuseOptions::default()).unwrap();
    let cpu = repfuse::cpu::execute_plan(&f.plan, &w).unwrap();
    let bytes: usize = w.bytes() + cpu.values().map(|t| t.numel() * 4).sum::<usize>();
    let limit = ctx.limits.max_storage_buffer_binding_size as usize;
    eprintln!("plan tensors {} MiB, binding limit {} MiB", bytes >> 20, limit >> 20);
    assert!(bytes > 128 << 20);
    let before = ctx.submissions();
    let gpu = repfuse::gpu::execute_plan_gpu(ctx, &f.plan, &w).unwrap();
    assert_eq!(ctx.submissions() - before, 1, "one submission however many windows (below 1 GiB)");
    for (k, t) in &cpu {
        let s = compare(&gpu[k], t, Tolerance::f32_sums(16)).unwrap();
        assert!(s.passed(), "tensor {} differs: {:?}", k, s);
    }
    // Bounded to one window per submission (as a model of several GiB is): the same
    // tensors, bit for bit, from more submissions.
    let before = ctx.submissions();
    let (bounded, _) = repfuse::gpu::execute_plan_gpu_bounded(ctx, &f.plan, &w, 1).unwrap();
    assert!(ctx.submissions() - before >= 2, "a 1-byte bound should split the windows into submissions");
    assert_eq!(bounded.len(), gpu.len(), "a submission's tensors were lost");
    for (k, t) in &gpu {
        assert_eq!(bounded[k].data(), t.data(), "tensor {} differs between one and several submissions", k);
    }
}

#[test]
fn gpu_conv_forward_shaders_match_the_reference_on_awkward_shapes() {
    // Fails loudly without an adapter; each conv kernel then gets its own context.
    common::gpu();
    // (in, out, kernel, stride, groups, dilation, h, w, batch): sizes that do not
    // divide the 64x64 tile, the 8x4 register block or the 256-wide workgroup,
    // grouped (with and without whole 8-channel blocks per group), strided, dilated,
    // depthwise (naive path), padded wider than the image, and wide.
    let cases = [
        (3, 5, 3, 1, 1, 1, 7, 9, 1),
        (16, 40, 3, 2, 1, 1, 15, 13, 2),
        (32, 96, 3, 1, 2, 1, 9, 11, 1),
        (24, 24, 5, 1, 24, 1, 10, 10, 2),
        (20, 70, 1, 1, 1, 1, 17, 5, 3),
        (16, 32, 3, 1, 1, 2, 12, 12, 1),
        (8, 64, 7, 2, 1, 1, 23, 19, 1),
        (12, 18, 3, 1, 3, 1, 6, 7, 2),
        (4, 9, 7, 1, 1, 1, 2, 3, 1),
    ];
    let mut specs: Vec<(usize, ConvSpec, [usize; 3])> =
        cases.iter().map(|&(cin, cout, k, s, g, d, h, w, n)| (cin, ConvSpec::same(cout, k, s, g).with_bias().dilated(d), [h, w, n])).collect();
    // The blocked kernel's 1x3-at-stride-1 path: a 1x3 kernel, no padding, padding
    // wider than the taps.
    specs.push((5, ConvSpec::kernel_hw(9, 1, 3, 1).with_bias(), [6, 11, 1]));
    specs.push((6, ConvSpec::same(10, 3, 1, 1).pad(0).with_bias(), [8, 9, 2]));
    specs.push((6, ConvSpec::same(10, 3, 1, 1).pad(2).with_bias(), [5, 6, 1]));
    for kernel in [ConvKernel::Tiled, ConvKernel::Blocked] {
        let ctx = GpuContext::new().unwrap().with_conv_kernel(kernel);
        for (cin, spec, [h, w, n]) in &specs {
            let mut b = GraphBuilder::new(*cin as u64);
            let x = b.input("x", &[*n, *cin, *h, *w]);
            let y = b.conv(&x, *spec);
            let y = b.relu(&y);
            b.output(&y);
            let (g2, w2) = b.finish();
            let inputs = random_inputs(&g2, 3);
            let r = repfuse::cpu::forward(&g2, &w2, &inputs).unwrap();
            let out = repfuse::gpu::forward_gpu(&ctx, &g2, &w2, &inputs).unwrap();
            for (name, t) in &r {
                let st = compare(&out[name], t, Tolerance::for_graph(&g2)).unwrap();
                assert!(st.passed(), "{:?} conv {} -> {:?} on {}x{} n{}: {:?}", kernel, cin, spec, h, w, n, st);
            }
        }
    }
}

#[test]
fn gpu_plan_compute_time_comes_from_timestamps_where_supported() {
    let ctx = common::gpu();
    let (g, w) = repvgg_chain(8);
    let f = fuse(&g, &FuseOptions::default()).unwrap();
    let (out, t) = repfuse::gpu::execute_plan_gpu_timed(ctx, &f.plan, &w).unwrap();
    assert!(!out.is_empty());
    assert!(t.wall_ms > 0.0);
    match t.compute_ms {
        Some(c) => {
            assert!(c > 0.0 && c <= t.wall_ms * 1.05 + 1.0, "compute {} ms vs wall {} ms", c, t.wall_ms);
            // Each kernel's passes lie inside the plan's span, and together they move
            // every byte the plan's steps read and write.
            let sum: f64 = t.kernels.iter().map(|k| k.ms).sum();
            assert!(!t.kernels.is_empty() && sum <= c * 1.001 + 1e-3, "kernels {:?} vs compute {} ms", t.kernels, c);
            let bytes: u64 = t.kernels.iter().map(|k| k.bytes).sum();
            let numel = |n: &str| w.get(n).map(|x| x.numel()).unwrap_or_else(|_| out[n].numel()) as u64;
            let want: u64 = f.plan.steps.iter().flat_map(|s| s.inputs().into_iter().chain(s.outputs())).map(|n| 4 * numel(n)).sum();
            assert_eq!(bytes, want, "kernel bytes cover every step's reads and writes");
        }
        None => assert!(!ctx.timestamps, "adapter has timestamps but none were read"),
    }
}

#[test]
fn gpu_every_forward_op_matches_the_reference_on_the_gpu() {
    let ctx = common::gpu();
    use repfuse::graph::Activation;
    // Concat, avg-pool with and without count_include_pad (padded, strided), BN,
    // global pool, flatten, linear, add of three, and every activation.
    let mut b = GraphBuilder::new(12);
    let x = b.input("x", &[2, 6, 11, 9]);
    let a = b.conv(&x, ConvSpec::same(4, 3, 1, 1).with_bias());
    let c = b.conv(&x, ConvSpec::same(5, 1, 1, 1));
    let cat = b.concat(&[a, c, x.clone()]);
    let p1 = b.avg_pool(&cat, 3, 2, 1, true);
    let p2 = b.avg_pool(&cat, 3, 2, 1, false);
    let p3 = b.avg_pool(&cat, 2, 2, 0, true);
    let p3 = b.conv(&p3, ConvSpec::same(15, 2, 1, 1).pad(0));
    let _ = p3;
    let s = b.add(&[p1, p2.clone(), p2]);
    let mut t = b.bn(&s);
    for act in [
        Activation::Relu,
        Activation::LeakyRelu(0.2),
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Gelu,
        Activation::Silu,
        Activation::HardSwish,
        Activation::HardSigmoid,
    ] {
        let u = b.act(&t, act);
        t = b.add(&[u, t.clone()]);
    }
    let gp = b.global_pool(&t);
    let fl = b.flatten(&gp);
    let y = b.linear(&fl, 7, true);
    b.output(&y);
    b.output(&t);
    let (g, w) = b.finish();
    let inputs = random_inputs(&g, 8);
    let r = repfuse::cpu::forward(&g, &w, &inputs).unwrap();
    let out = repfuse::gpu::forward_gpu(ctx, &g, &w, &inputs).unwrap();
    for (name, t) in &r {
        let s = compare(&out[name], t, Tolerance::for_graph(&g)).unwrap();
        assert!(s.passed(), "{}: {:?}", name, s);
    }
}

#[test]
fn gpu_a_merge_over_one_storage_binding_is_cut_by_output_channel() {
    // The binding lowered to 64 KiB: each stride-2 block's merge (a 3x3 and a 1x1
    // branch, ~160 KB dense, less grouped or depthwise) is over it, so it runs cut
    // into pieces of output rows and joined; the result must equal the CPU's.
    common::gpu();
    let mut ctx = GpuContext::new().unwrap();
    ctx.limits.max_storage_buffer_binding_size = 64 << 10;
    let mut b = GraphBuilder::new(9);
    let x = b.input("x", &[1, 32, 8, 8]);
    let t = blocks::repvgg_block(&mut b, &x, 64, 2, 1);
    // Pieces of one whole group of 32 rows, then of four groups of 16.
    let t = blocks::repvgg_block(&mut b, &t, 128, 2, 4);
    let t = blocks::repvgg_block(&mut b, &t, 128, 2, 8);
    let t = blocks::mobileone_block(&mut b, &t, 128, 3, 2, 128, 2);
    b.output(&t);
    let (g, w) = b.finish();
    assert_plan_matches_on(&ctx, "cut merges", &g, &w, &FuseOptions::default());
    // Identity branches the plan computes (a batch norm as a depthwise conv, a bare
    // shortcut as a Dirac) are cut with their merge, row for row: each piece's
    // identity rows read the merge's input channels from the piece's first row on.
    let mut b = GraphBuilder::new(9);
    let x = b.input("x", &[1, 64, 8, 8]);
    let t = blocks::repvgg_block(&mut b, &x, 64, 1, 1);
    let c = b.conv_bn(&t, ConvSpec::same(64, 3, 1, 1));
    let t = b.add(&[c, t]);
    b.output(&t);
    let (g, w) = b.finish();
    assert_plan_matches_on(&ctx, "cut merges with identities", &g, &w, &FuseOptions::default());
    // A merge of concatenated convs (sources at output offsets) is not cut: a binding
    // too small for it is refused by name, not run wrong.
    let mut b = GraphBuilder::new(9);
    let x = b.input("x", &[1, 64, 8, 8]);
    let (l, r) = (b.conv_bn(&x, ConvSpec::same(40, 3, 1, 1)), b.conv_bn(&x, ConvSpec::same(40, 3, 1, 1)));
    let t = b.concat(&[l, r]);
    b.output(&t);
    let (g, w) = b.finish();
    let f = fuse(&g, &FuseOptions::default()).unwrap();
    let e = repfuse::gpu::execute_plan_gpu(&ctx, &f.plan, &w).unwrap_err().to_string();
    assert!(e.contains("cannot be cut by output channel"), "{}", e);
}

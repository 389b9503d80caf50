//! Mutation checks: the verification must FAIL on each classic fusion defect, and pass
//! the correct fusion of the same model with room to spare. Each defect is applied to
//! a copy (of the graph, the weights, or the fused result); nothing real is changed.
//!
//! - the BN eps dropped from every fold (a variance of `var` instead of `var + eps`);
//! - one branch's bias lost (one BN's shift `beta - mean * scale` made 0);
//! - a fused kernel placed one tap off (its columns rolled by one);
//! - a fused conv's pads swapped (`[1, 1, 1, 1]` -> `[0, 0, 2, 2]`, same output size).
//!
//! Measured (worst element's error over its bound): correct fusions 0.008-0.12; dropped
//! eps 2.3-10; lost bias 1.7e4-6.8e5; one tap off 14-2e4; swapped pads 11-2e4.

use repfuse::graph::Op;
use repfuse::verify::{check_equivalence, Equivalence};
use repfuse::{fuse, FuseOptions, Graph, Tensor, Weights};

/// Models with the blocks each defect touches: RepVGG (BN, 1x1 and identity
/// branches), DBB (sequences and avg-pool), ACNet (asymmetric), MobileOne (depthwise).
const MODELS: [(&str, usize); 4] = [("repvgg_a0", 32), ("dbb", 16), ("acnet", 16), ("mobileone_s0", 32)];

fn verdict(e: &repfuse::Result<Equivalence>) -> String {
    match e {
        Ok(e) => {
            format!("passed={} worst ratio {:.3e} max_abs {:.3e}", e.passed(), e.outputs.iter().map(|(_, s)| s.worst_ratio).fold(0.0, f64::max), e.max_abs())
        }
        Err(err) => format!("error: {}", err),
    }
}

fn worst_ratio(e: &Equivalence) -> f64 {
    e.outputs.iter().map(|(_, s)| s.worst_ratio).fold(0.0, f64::max)
}

/// Fails the test unless verifying `fg`/`fw` against the original fails (an error,
/// e.g. a shape change, counts as a failed verification too), and by a wide margin:
/// at least 10x further from the original than the correct fusion of the same model.
fn assert_caught(what: &str, g: &Graph, w: &Weights, fg: &Graph, fw: &Weights) {
    let e = check_equivalence(g, w, fg, fw, 11);
    assert!(e.as_ref().map_or(true, |e| !e.passed()), "{}: the defect was NOT caught: {}", what, verdict(&e));
    if let Ok(e) = &e {
        let f = fuse(g, &FuseOptions::default()).unwrap();
        let good = check_equivalence(g, w, &f.graph, &f.weights_cpu(w).unwrap(), 11).unwrap();
        assert!(
            worst_ratio(e) > 10.0 * worst_ratio(&good),
            "{}: caught only narrowly: {} (correct fusion: {})",
            what,
            verdict(&Ok(e.clone())),
            verdict(&Ok(good))
        );
    }
    eprintln!("{:<40} caught: {}", what, verdict(&e));
}

fn bn_names(g: &Graph) -> Vec<String> {
    g.nodes.iter().filter(|n| matches!(n.op, Op::BatchNorm(_))).map(|n| n.name.clone()).collect()
}

#[test]
fn correct_fusions_pass_with_room_to_spare() {
    for (name, size) in MODELS {
        let (g, w, _) = repfuse::zoo::build(name, 1, size, 5).unwrap();
        let f = fuse(&g, &FuseOptions::default()).unwrap();
        let fw = f.weights_cpu(&w).unwrap();
        let e = check_equivalence(&g, &w, &f.graph, &fw, 11).unwrap();
        assert!(e.passed(), "{}: {}", name, verdict(&Ok(e.clone())));
        eprintln!("{:<40} correct: {}", name, verdict(&Ok(e.clone())));
        assert!(worst_ratio(&e) < 0.5, "{}: a correct fusion uses over half the bound: {}", name, verdict(&Ok(e)));
    }
}

#[test]
fn dropping_the_bn_eps_is_caught() {
    for (name, size) in MODELS {
        let (g, w, _) = repfuse::zoo::build(name, 1, size, 5).unwrap();
        let mut bad = g.clone();
        for n in &mut bad.nodes {
            if let Op::BatchNorm(b) = &mut n.op {
                b.eps = 0.0;
            }
        }
        let f = fuse(&bad, &FuseOptions::default()).unwrap();
        let fw = f.weights_cpu(&w).unwrap();
        assert_caught(&format!("{}: BN eps dropped", name), &g, &w, &f.graph, &fw);
    }
}

#[test]
fn losing_one_branch_bias_is_caught() {
    for (name, size) in MODELS {
        let (g, w, _) = repfuse::zoo::build(name, 1, size, 5).unwrap();
        // The last BN of the network, wherever it sits: its shift becomes 0 (beta = 0
        // and mean = 0), as if the fold forgot that branch's bias.
        let bn = bn_names(&g).pop().unwrap();
        let Op::BatchNorm(b) = &g.node(&bn).unwrap().op else { unreachable!() };
        let mut bad_w = Weights::new();
        for (k, t) in w.iter() {
            let zero = *k == b.beta || *k == b.mean;
            bad_w.insert(k.clone(), if zero { Tensor::zeros(t.shape().to_vec()) } else { t.clone() });
        }
        let f = fuse(&g, &FuseOptions::default()).unwrap();
        let fw = f.weights_cpu(&bad_w).unwrap();
        assert_caught(&format!("{}: bias of `{}` lost", name, bn), &g, &w, &f.graph, &fw);
    }
}

/// The first fused conv with a kernel at least 3 wide and unit stride.
fn wide_conv(f: &repfuse::Fusion) -> String {
    f.graph
        .nodes
        .iter()
        .find(|n| matches!(&n.op, Op::Conv2d(c) if c.kernel[1] >= 3 && c.pads == [1, 1, 1, 1] && f.origins.contains_key(&n.name)))
        .map(|n| n.name.clone())
        .expect("a fused 3x3 conv")
}

/// `fw` with the kernel of `f`'s first wide fused conv placed one tap off: every row
/// of every kernel moved one tap to the right (wrapping). Returns the conv's name,
/// its bias parameter and the mutated weights.
fn one_tap_off(f: &repfuse::Fusion, fw: &Weights) -> (String, Option<String>, Weights) {
    let conv = wide_conv(f);
    let Op::Conv2d(c) = &f.graph.node(&conv).unwrap().op else { unreachable!() };
    let t = fw.get(&c.weight).unwrap();
    let kw = c.kernel[1];
    let rolled: Vec<f32> = t.data().chunks(kw).flat_map(|row| (0..kw).map(move |i| row[(i + kw - 1) % kw])).collect();
    let mut off = fw.clone();
    off.insert(c.weight.clone(), Tensor::new(&c.weight, t.shape().to_vec(), rolled).unwrap());
    (conv, c.bias.clone(), off)
}

#[test]
fn a_kernel_one_tap_off_is_caught() {
    for (name, size) in MODELS {
        let (g, w, _) = repfuse::zoo::build(name, 1, size, 5).unwrap();
        let f = fuse(&g, &FuseOptions::default()).unwrap();
        let (conv, _, fw) = one_tap_off(&f, &f.weights_cpu(&w).unwrap());
        assert_caught(&format!("{}: `{}` one tap off", name, conv), &g, &w, &f.graph, &fw);
    }
}

#[test]
fn swapped_pads_are_caught() {
    for (name, size) in MODELS {
        let (g, w, _) = repfuse::zoo::build(name, 1, size, 5).unwrap();
        let mut f = fuse(&g, &FuseOptions::default()).unwrap();
        let fw = f.weights_cpu(&w).unwrap();
        let conv = wide_conv(&f);
        let n = f.graph.nodes.iter_mut().find(|n| n.name == conv).unwrap();
        if let Op::Conv2d(c) = &mut n.op {
            c.pads = [0, 0, 2, 2];
        }
        assert_caught(&format!("{}: `{}` pads swapped", name, conv), &g, &w, &f.graph, &fw);
    }
}

/// Models the f64 reference cannot run are verified end to end by the ONNX engine,
/// against `max|y|` rather than a per-element scale: the same defects must fail there
/// too. Checked on in-repository PyTorch exports here (the engine path does not depend
/// on the ops), and on the real timm models in tests/corpus.rs.
#[test]
fn the_onnx_engine_check_catches_a_dropped_eps_and_a_kernel_one_tap_off() {
    use repfuse::io::onnx::{onnx_bytes, read_onnx};
    use repfuse::verify::{check_equivalence_onnx, depth_all, OnnxSource, Tolerance, UNIT_F32};
    #[path = "common/mod.rs"]
    mod common;
    for case in ["z13_repvgg_bn_branch", "z14_dbb_block", "z08_acnet"] {
        let path = common::fixture(case);
        let m = read_onnx(&path).unwrap();
        let original = std::fs::read(&path).unwrap();
        let tol = Tolerance::for_engine(depth_all(&m.graph), UNIT_F32);
        let check = |fg: &Graph, fw: &Weights| {
            let bytes = onnx_bytes(Some(&m), fg, fw).unwrap();
            let c =
                check_equivalence_onnx(&OnnxSource { bytes: &original, dir: None }, &OnnxSource { bytes: &bytes, dir: None }, &m.graph.inputs, 3, tol).unwrap();
            c.equivalence
        };
        let f = fuse(&m.graph, &FuseOptions::default()).unwrap();
        let fw = f.weights_cpu(&m.weights).unwrap();
        let good = check(&f.graph, &fw);
        assert!(good.passed(), "{}: correct fusion fails the engine check: {}", case, verdict(&Ok(good.clone())));
        let mut bad = m.graph.clone();
        for n in &mut bad.nodes {
            if let Op::BatchNorm(b) = &mut n.op {
                b.eps = 0.0;
            }
        }
        let fb = fuse(&bad, &FuseOptions::default()).unwrap();
        let no_eps = check(&fb.graph, &fb.weights_cpu(&m.weights).unwrap());
        let off = check(&f.graph, &one_tap_off(&f, &fw).2);
        for (what, e) in [("BN eps dropped", &no_eps), ("one tap off", &off)] {
            assert!(
                !e.passed() && worst_ratio(e) > 10.0 * worst_ratio(&good),
                "{} {}: not caught by the engine check: {} (correct: {})",
                case,
                what,
                verdict(&Ok(e.clone())),
                verdict(&Ok(good.clone()))
            );
            eprintln!("{:<24} {:<16} engine check caught: {} (correct {:.3})", case, what, verdict(&Ok(e.clone())), worst_ratio(&good));
        }
    }
}

/// The engine check's conditioning term on a model whose answer is known: a
/// depthwise 1x1 conv multiplying every input element by `k` moves its output by
/// `k` times the input's move (an input moved by `2u` of itself moves by one or two
/// units in the last place, `u` to `2u` of itself), give or take the rounding of both
/// outputs (up to `u` of each). So the allowance is `SENSITIVITY_SIGMAS * k * max|x|`
/// times 0.5u to 4u (the largest move of 144 elements, each at least `u` before the
/// output roundings): no perturbation, a perturbation in float16 units, or the
/// factor dropped (0.43u here) all fail.
#[test]
fn the_onnx_engine_allows_for_the_models_measured_one_ulp_sensitivity() {
    use repfuse::io::onnx::onnx_bytes;
    use repfuse::verify::{check_equivalence_onnx, random_inputs_for, OnnxSource, Tolerance, SENSITIVITY_SIGMAS, UNIT_F32};
    use repfuse::zoo::{ConvSpec, GraphBuilder};
    let (c, k) = (4, 37.0f32);
    let mut b = GraphBuilder::new(5);
    let x = b.input("x", &[1, c, 6, 6]);
    let y = b.conv(&x, ConvSpec::same(c, 1, 1, c));
    b.output(&y);
    let (g, mut w) = b.finish();
    let Op::Conv2d(conv) = &g.nodes[0].op else { unreachable!() };
    w.insert(conv.weight.clone(), Tensor::new(&conv.weight, vec![c, 1, 1, 1], vec![k; c]).unwrap());
    let bytes = onnx_bytes(None, &g, &w).unwrap();
    let src = OnnxSource { bytes: &bytes, dir: None };
    let tol = Tolerance::for_engine(1, UNIT_F32);
    let check = check_equivalence_onnx(&src, &src, &g.inputs, 3, tol).unwrap();
    let max_x = random_inputs_for(&g.inputs, 3)["x"].data().iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    let (_, s) = &check.equivalence.outputs[0];
    let per_unit = s.tolerance.sensitivity / (SENSITIVITY_SIGMAS * k as f64 * max_x * UNIT_F32);
    assert!((0.5..=4.0).contains(&per_unit), "allowance {:.3e} is {:.3} u-units of k * max|x|, expected 0.5 to 4", s.tolerance.sensitivity, per_unit);
    assert!(check.equivalence.passed() && s.max_abs == 0.0, "a model against itself: {:?}", s);
    // An allowance past 1% of max|y| says the comparison cannot tell; this one cannot.
    assert!(!s.inconclusive(), "{:?}", s);
    let y = &repfuse::verify::random_inputs_for(&g.inputs, 3)["x"];
    let allowing = |share: f64| repfuse::verify::compare(y, y, Tolerance { sensitivity: share * max_x, ..tol }).unwrap();
    assert!(allowing(0.011).inconclusive() && !allowing(0.009).inconclusive());
}

/// A float16 model with ops the f64 reference does not run (a squeeze-excite gate)
/// and a Gemm head, which the ONNX engine cannot run in float16: the check widens
/// both models to float32 (keeping the stored values) and still tells a correct
/// fusion from a fused kernel one tap off or a fused bias lost. (A dropped BN eps
/// changes these weights by 5e-6 to 5e-5 of themselves, under float16's rounding:
/// no check of a float16 file can see it.)
#[test]
fn the_onnx_engine_checks_a_float16_model_it_cannot_run_as_written() {
    use repfuse::io::onnx::{onnx_bytes, read_onnx, FloatType};
    use repfuse::verify::{check_equivalence_onnx, depth_all, OnnxSource, Tolerance, UNIT_F16};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fp16_se_head.onnx");
    let m = read_onnx(&path).unwrap();
    assert_eq!(m.float_type, FloatType::F16);
    let original = std::fs::read(&path).unwrap();
    let tol = Tolerance::for_engine(depth_all(&m.graph), UNIT_F16);
    let check = |fg: &Graph, fw: &Weights| {
        let bytes = onnx_bytes(Some(&m), fg, fw).unwrap();
        check_equivalence_onnx(&OnnxSource { bytes: &original, dir: None }, &OnnxSource { bytes: &bytes, dir: None }, &m.graph.inputs, 3, tol).unwrap()
    };
    let f = fuse(&m.graph, &FuseOptions::default()).unwrap();
    let fw = f.weights_cpu(&m.weights).unwrap();
    let good = check(&f.graph, &fw);
    assert!(good.engine.contains("widened"), "{}", good.engine);
    assert!(good.equivalence.passed(), "correct fusion fails: {}", verdict(&Ok(good.equivalence.clone())));
    let (_, bias, tap) = one_tap_off(&f, &fw);
    let bias = bias.expect("the fused conv has a bias");
    let mut no_bias = fw.clone();
    no_bias.insert(bias.clone(), Tensor::new(&bias, fw.get(&bias).unwrap().shape().to_vec(), vec![0.0; fw.get(&bias).unwrap().numel()]).unwrap());
    for (what, w) in [("one tap off", &tap), ("fused bias lost", &no_bias)] {
        let e = check(&f.graph, w).equivalence;
        assert!(
            !e.passed() && worst_ratio(&e) > 10.0 * worst_ratio(&good.equivalence),
            "float16 {}: not caught: {} (correct: {})",
            what,
            verdict(&Ok(e.clone())),
            verdict(&Ok(good.equivalence.clone()))
        );
        eprintln!("fp16_se_head {:<16} engine check caught: {} (correct {:.3})", what, verdict(&Ok(e)), worst_ratio(&good.equivalence));
    }
}

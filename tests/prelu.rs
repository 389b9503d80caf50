//! PRelu with a constant slope, the op added as one file (src/ops/prelu.rs): ONNX
//! semantics judged by an independent engine (tract) and ONNX Runtime, fusion around
//! it, and the GPU forward.

mod common;

use repfuse::graph::{Graph, Op};
use repfuse::io::onnx::{onnx_bytes, read_onnx, write_onnx};
use repfuse::ops::PRelu;
use repfuse::verify::tract_engine::TractModel;
use repfuse::verify::{compare, depth_all, random_inputs, Tolerance, UNIT_F32};
use repfuse::zoo::{ConvSpec, GraphBuilder};
use repfuse::Weights;

/// conv+BN, then PRelu with one slope per channel (`[C, 1, 1]`, negative, zero and
/// above one among them), then PRelu with one shared slope (`[1]`), then conv+BN.
fn prelu_net() -> (Graph, Weights) {
    let mut b = GraphBuilder::new(31);
    let x = b.input("x", &[2, 6, 9, 7]);
    let mut t = b.conv_bn(&x, ConvSpec::same(5, 3, 1, 1));
    for (name, shape, data) in [("slope_c", vec![5, 1, 1], vec![-0.5, 0.0, 0.25, 1.0, 2.5]), ("slope_s", vec![1], vec![0.1])] {
        let slope = b.tensor(name, &shape, data);
        t = b.op("prelu", Op::PRelu(PRelu { slope, slope_shape: shape }), &[t]);
    }
    let y = b.conv_bn(&t, ConvSpec::same(4, 1, 1, 1));
    b.output(&y);
    let (g, w) = b.finish();
    g.validate().expect("a valid PRelu net");
    (g, w)
}

#[test]
fn prelu_reference_follows_onnx_semantics_like_an_independent_engine() {
    let (g, w) = prelu_net();
    let bytes = onnx_bytes(None, &g, &w).unwrap();
    let tract = TractModel::load(&bytes, None, &g.inputs).unwrap();
    for seed in [1, 2] {
        let inputs = random_inputs(&g, seed);
        let reference = repfuse::cpu::forward(&g, &w, &inputs).unwrap();
        let engine = tract.run(&inputs).unwrap();
        let tol = Tolerance::for_engine(depth_all(&g), UNIT_F32);
        for (name, r) in &reference {
            let s = compare(&engine[name], r, tol).unwrap();
            assert!(s.passed(), "tract and the reference disagree on `{}` (seed {}): {:?}", name, seed, s);
        }
    }
}

#[test]
fn prelu_reads_back_from_onnx_as_prelu_and_blocks_fuse_around_it() {
    let (g, w) = prelu_net();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prelu.onnx");
    write_onnx(None, &g, &w, &path).unwrap();
    let m = read_onnx(&path).unwrap();
    assert_eq!(m.graph.count("PRelu"), 2, "PRelu read as {:?}", m.graph.op_histogram());
    let fused = common::fusion::fuse_checked(&m.graph, &m.weights, 5);
    common::fusion::assert_ops(&fused, &[("Conv", 2), ("BatchNorm", 0), ("PRelu", 2)]);
}

#[test]
fn onnxruntime_runs_the_fused_prelu_net_like_the_original() {
    let (g, w) = prelu_net();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("train.onnx"), dir.path().join("deploy.onnx"));
    write_onnx(None, &g, &w, &a).unwrap();
    let m = read_onnx(&a).unwrap();
    let fusion = repfuse::fuse(&m.graph, &repfuse::FuseOptions::default()).unwrap();
    let fw = fusion.weights_cpu(&m.weights).unwrap();
    write_onnx(Some(&m), &fusion.graph, &fw, &b).unwrap();
    common::ort_agree("prelu net", &a, &b, common::engine_bound(&g));
}

#[test]
fn prelu_with_a_slope_that_does_not_broadcast_is_an_error_naming_the_node() {
    let (mut g, _) = prelu_net();
    g.params.insert("slope_c".into(), vec![3, 1, 1]);
    let Op::PRelu(p) = &mut g.nodes.iter_mut().find(|n| matches!(&n.op, Op::PRelu(p) if p.slope == "slope_c")).unwrap().op else { unreachable!() };
    p.slope_shape = vec![3, 1, 1];
    let e = g.validate().unwrap_err().to_string();
    assert!(e.contains("prelu") && e.contains("slope"), "{}", e);
}

#[test]
fn gpu_prelu_forward_matches_the_reference() {
    let ctx = common::gpu();
    let (g, w) = prelu_net();
    let inputs = random_inputs(&g, 9);
    let r = repfuse::cpu::forward(&g, &w, &inputs).unwrap();
    let out = repfuse::gpu::forward_gpu(ctx, &g, &w, &inputs).unwrap();
    for (name, t) in &r {
        let s = compare(&out[name], t, Tolerance::for_graph(&g)).unwrap();
        assert!(s.passed(), "{}: {:?}", name, s);
    }
}

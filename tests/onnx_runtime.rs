//! ONNX Runtime judges what repfuse writes: for every fixture and every zoo model, the
//! original and the fused ONNX run in ONNX Runtime on the same random inputs and must
//! agree; a read -> write round trip without fusion must run identically.
//!
//! Needs a Python with onnxruntime (`common::ort_python`): without one these tests
//! fail; scripts/test.sh leaves them out by name, loudly, when it cannot make one.

mod common;

use std::path::PathBuf;

use repfuse::io::onnx::{read_onnx, write_onnx};
use repfuse::verify::Tolerance;
use repfuse::{fuse, FuseOptions};

/// ORT against ORT, both f32 sums: the allowed error relative to `max|reference|`.
fn ort_bound(g: &repfuse::Graph) -> f64 {
    let t = Tolerance::for_graph(g);
    t.sigmas * t.unit
}

fn fixtures() -> Vec<PathBuf> {
    common::fixture_cases()
}

#[test]
fn onnxruntime_fused_fixtures_run_in_onnx_runtime_like_the_originals() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in fixtures() {
        let case = dir.file_name().unwrap().to_string_lossy().to_string();
        let m = read_onnx(&dir.join("train.onnx")).unwrap();
        let f = fuse(&m.graph, &FuseOptions::default()).unwrap();
        let w = f.weights_cpu(&m.weights).unwrap();
        let out = tmp.path().join(format!("{}.deploy.onnx", case));
        write_onnx(Some(&m), &f.graph, &w, &out).unwrap();
        common::ort_agree(&case, &dir.join("train.onnx"), &out, ort_bound(&m.graph));
    }
}

#[test]
fn onnxruntime_round_trip_without_fusion_runs_identically() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in fixtures() {
        let case = dir.file_name().unwrap().to_string_lossy().to_string();
        let m = read_onnx(&dir.join("train.onnx")).unwrap();
        let out = tmp.path().join(format!("{}.roundtrip.onnx", case));
        write_onnx(Some(&m), &m.graph, &m.weights, &out).unwrap();
        // Same graph, same weights: ORT must give the same numbers up to its own
        // kernel choice.
        common::ort_agree(&format!("{} (round trip)", case), &dir.join("train.onnx"), &out, ort_bound(&m.graph));
    }
}

#[test]
fn onnxruntime_zoo_models_written_by_repfuse_run_in_onnx_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    for m in repfuse::zoo::MODELS.iter().filter(|m| !m.name.contains("b2") && !m.name.contains("b3") && !m.name.contains("s4")) {
        let (g, w, _) = repfuse::zoo::build(m.name, 1, 32, 2).unwrap();
        let f = fuse(&g, &FuseOptions::default()).unwrap();
        let fw = f.weights_cpu(&w).unwrap();
        let (a, b) = (tmp.path().join(format!("{}.train.onnx", m.name)), tmp.path().join(format!("{}.deploy.onnx", m.name)));
        write_onnx(None, &g, &w, &a).unwrap();
        write_onnx(None, &f.graph, &fw, &b).unwrap();
        common::ort_agree(m.name, &a, &b, ort_bound(&g));
    }
}

#[test]
fn onnxruntime_external_data_written_by_repfuse_runs_in_onnx_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    for case in ["z13_repvgg_bn_branch", "z14_dbb_block"] {
        let src = fixtures().into_iter().find(|d| d.ends_with(case)).unwrap().join("train.onnx");
        let m = read_onnx(&src).unwrap();
        let f = fuse(&m.graph, &FuseOptions::default()).unwrap();
        let w = f.weights_cpu(&m.weights).unwrap();
        let out = tmp.path().join(format!("{}.external.onnx", case));
        repfuse::io::onnx::write_onnx_with(Some(&m), &f.graph, &w, &out, 0).unwrap();
        common::ort_agree(&format!("{} (external data)", case), &src, &out, ort_bound(&m.graph));
    }
}

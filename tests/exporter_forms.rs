//! The forms real exporters write (tests/data/forms, made by make.py there): each
//! fuses down to at most the op counts in its `.json`, the written model is valid,
//! and the fused model computes what the original does, checked by the CPU reference
//! where it can run the graph and by the ONNX engine (tract) where it cannot; ONNX
//! Runtime agrees too.

mod common;

use std::path::{Path, PathBuf};

use repfuse::io::onnx::{onnx_bytes, op_counts, read_onnx, write_onnx};
use repfuse::verify::{check_equivalence, check_equivalence_onnx, depth_all, unrunnable_ops, OnnxSource, Tolerance, UNIT_F32};
use repfuse::{fuse, FuseOptions};

fn forms() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/forms");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "onnx")).collect();
    v.sort();
    assert!(v.len() >= 6, "exporter forms missing: {:?}", v);
    v
}

#[test]
fn exporter_forms_fuse_to_their_deploy_counts_and_compute_the_same() {
    for path in forms() {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let limits: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path.with_extension("json")).unwrap()).unwrap();
        let m = read_onnx(&path).unwrap_or_else(|e| panic!("{}: {}", name, e));
        let f = fuse(&m.graph, &FuseOptions::default()).unwrap_or_else(|e| panic!("{}: {}", name, e));
        let w = f.weights_cpu(&m.weights).unwrap();
        let bytes = onnx_bytes(Some(&m), &f.graph, &w).unwrap_or_else(|e| panic!("{}: {}", name, e));
        let counts = op_counts(&bytes).unwrap();
        for (op, max) in limits.as_object().unwrap() {
            let have = counts.get(op).copied().unwrap_or(0);
            assert!(have as u64 <= max.as_u64().unwrap(), "{}: {} {} left, at most {} expected (all: {:?})", name, have, op, max, counts);
        }
        // Every BN, sum and concat still there is explained.
        let kept =
            f.graph.nodes.iter().filter(|n| matches!(n.op, repfuse::graph::Op::BatchNorm(_) | repfuse::graph::Op::Add | repfuse::graph::Op::Concat)).count();
        assert_eq!(f.report.left.len(), kept, "{}: left {:?}", name, f.report.left);
        assert!(f.report.left.iter().all(|l| l.why.starts_with("refused by ") || l.why.starts_with("no rule matches: ")), "{}: {:?}", name, f.report.left);
        // The engine compares the file as read with the file as written, so it also
        // checks what the reader lifted (the reference sees only the lifted graph).
        let original = std::fs::read(&path).unwrap();
        let tol = Tolerance::for_engine(depth_all(&m.graph), UNIT_F32);
        let c = check_equivalence_onnx(&OnnxSource { bytes: &original, dir: None }, &OnnxSource { bytes: &bytes, dir: None }, &m.graph.inputs, 3, tol).unwrap();
        assert!(c.equivalence.passed(), "{}: engine check failed: {:?}", name, c.equivalence);
        let mut engine = format!("engine, worst {:.3} of bound", c.equivalence.outputs[0].1.worst_ratio);
        if unrunnable_ops(&m.graph).is_empty() {
            let e = check_equivalence(&m.graph, &m.weights, &f.graph, &w, 3).unwrap();
            assert!(e.passed(), "{}: reference check failed: {:?}", name, e);
            engine += &format!("; reference, worst {:.3} of bound", e.outputs[0].1.worst_ratio);
        }
        eprintln!("{:<30} {:?} -> {:?}  ({})", name, m.graph.op_histogram(), counts, engine);
    }
}

#[test]
fn onnxruntime_runs_the_fused_exporter_forms_like_the_originals() {
    let tmp = tempfile::tempdir().unwrap();
    for path in forms() {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let m = read_onnx(&path).unwrap();
        let f = fuse(&m.graph, &FuseOptions::default()).unwrap();
        let out = tmp.path().join(format!("{}.onnx", name));
        write_onnx(Some(&m), &f.graph, &f.weights_cpu(&m.weights).unwrap(), &out).unwrap();
        common::ort_agree(&name, &path, &out, common::engine_bound(&m.graph));
    }
}

/// `inspect` says which nodes were carried unchanged and why: every carried node of
/// every form is counted once under its op type, and the form with GELU-as-Erf, a
/// mean and a broadcast sum names exactly those.
#[test]
fn carried_nodes_are_reported_by_type_with_a_reason() {
    for path in forms() {
        let m = read_onnx(&path).unwrap();
        let f = fuse(&m.graph, &FuseOptions::default()).unwrap();
        let opaque = f.graph.nodes.iter().filter(|n| matches!(n.op, repfuse::graph::Op::Opaque(_))).count();
        assert_eq!(f.report.carried.iter().map(|c| c.count).sum::<usize>(), opaque, "{}", path.display());
        assert!(f.report.carried.iter().all(|c| c.why.contains("carried unchanged")), "{}: {:?}", path.display(), f.report.carried);
    }
    let m = read_onnx(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/forms/unfusable_scale_and_broadcast.onnx")).unwrap();
    let carried = fuse(&m.graph, &FuseOptions::default()).unwrap().report.carried;
    let kinds: Vec<(&str, usize)> = carried.iter().map(|c| (c.op_type.as_str(), c.count)).collect();
    assert_eq!(kinds, [("Add", 1), ("Erf", 1), ("ReduceMean", 1)]);
    assert!(carried[0].why.contains("broadcast"), "{:?}", carried[0]);
    assert!(carried[1].why.contains("not modelled"), "{:?}", carried[1]);
}

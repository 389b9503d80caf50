//! Property: whatever repfuse writes is a valid model. Random graphs mixing fusable
//! blocks with ops repfuse does not model, sharing initializers (through Identity
//! aliases) and intermediate tensors with them (tests/gen_mixed_model.py makes them
//! with onnx's own helpers), are fused and written; every written model must pass
//! onnx's full checker and run in ONNX Runtime like the original.

mod common;

use std::path::Path;
use std::process::Command;

use repfuse::io::onnx::{read_onnx, write_onnx};
use repfuse::{fuse, FuseOptions};

#[test]
fn onnxruntime_mixed_graphs_with_shared_tensors_are_written_valid() {
    let py = common::ort_python();
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24u64);
    let mut fused_any = 0;
    for seed in 0..cases {
        let src = tmp.path().join(format!("mixed{}.onnx", seed));
        let o = Command::new(&py).arg(root.join("gen_mixed_model.py")).arg(seed.to_string()).arg(&src).output().unwrap();
        assert!(o.status.success(), "generator failed for seed {}: {}", seed, String::from_utf8_lossy(&o.stderr));
        let m = read_onnx(&src).unwrap_or_else(|e| panic!("seed {}: {}", seed, e));
        let f = fuse(&m.graph, &FuseOptions::default()).unwrap_or_else(|e| panic!("seed {}: {}", seed, e));
        fused_any += f.report.fused.len();
        let w = f.weights_cpu(&m.weights).unwrap();
        let out = tmp.path().join(format!("mixed{}.deploy.onnx", seed));
        write_onnx(Some(&m), &f.graph, &w, &out).unwrap_or_else(|e| panic!("seed {}: {}", seed, e));
        // Both run in f32 with f32 sums: the engine bound for the model's depth.
        common::ort_agree(&format!("seed {}", seed), &src, &out, common::engine_bound(&m.graph));
    }
    assert!(fused_any > 0, "the generated graphs gave the fuser nothing to do");
}

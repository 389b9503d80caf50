//! Every PyTorch-exported fixture in tests/data/fixtures fuses: the deploy graph's
//! output on the recorded `input` matches PyTorch's `output_train`, its op counts are
//! at most `ops_deploy` / `key_deploy`, and NEGATIVE cases keep their exact form.

use std::collections::BTreeMap;
use std::path::Path;

use repfuse::io::onnx::{onnx_bytes, op_counts, read_onnx};
use repfuse::verify::{compare, Tolerance};
use repfuse::{fuse, FuseOptions, Tensor};

mod common;

fn load_io(dir: &Path) -> BTreeMap<String, Tensor> {
    let path = dir.join("io.safetensors");
    let w = repfuse::io::native::read_safetensors(&path, &std::fs::read(&path).unwrap()).unwrap();
    w.iter().map(|(k, t)| (k.clone(), t.clone())).collect()
}

fn expected(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

#[test]
fn every_fixture_fuses_to_its_deploy_form_and_matches_pytorch() {
    let cases = common::fixture_cases();
    assert!(cases.len() >= 20, "fixtures missing: {:?}", cases);
    for dir in cases {
        let case = dir.file_name().unwrap().to_string_lossy().to_string();
        let exp = expected(&dir);
        let m = read_onnx(&dir.join("train.onnx")).unwrap_or_else(|e| panic!("{}: {}", case, e));
        let f = fuse(&m.graph, &FuseOptions::default()).unwrap_or_else(|e| panic!("{}: {}", case, e));
        let w = f.weights_cpu(&m.weights).unwrap();
        let io = load_io(&dir);
        let inputs = [("input".to_string(), io["input"].clone())].into_iter().collect();
        let out = repfuse::cpu::forward(&f.graph, &w, &inputs).unwrap_or_else(|e| panic!("{}: {}", case, e));
        let got = &out[&f.graph.outputs[0]];
        // fp16 models: PyTorch computed in half precision; compare at fp16 resolution.
        let fp16 = case.contains("fp16");
        let tol = if fp16 { Tolerance { atol: 2e-2, rtol: 1e-2 } } else { Tolerance::for_graph(&m.graph) };
        let s = compare(got, &io["output_train"], tol).unwrap();
        assert!(s.passed(), "{}: fused output vs PyTorch output_train: {:?}", case, s);
        let bytes = onnx_bytes(Some(&m), &f.graph, &w).unwrap();
        let counts = op_counts(&bytes).unwrap();
        let want = exp.get("ops_deploy").or_else(|| exp.get("key_deploy")).unwrap().as_object().unwrap();
        for (op, n) in want {
            if op.contains('(') || op == "nodes" {
                continue;
            }
            let have = counts.get(op).copied().unwrap_or(0);
            let n = n.as_u64().unwrap() as usize;
            assert!(have <= n, "{}: {} {} after fusion, PyTorch's deploy form has {} (all: {:?})", case, op, have, n, counts);
            if exp["paradigm"] == "NEGATIVE" {
                assert_eq!(have, n, "{}: NEGATIVE case must keep its exact deploy form ({:?})", case, counts);
            }
        }
        eprintln!("{:<34} {:?} -> {:?}  max_abs {:.2e} vs torch {}", case, m.graph.op_histogram(), counts, s.max_abs, exp["max_abs_diff_torch"]);
    }
}

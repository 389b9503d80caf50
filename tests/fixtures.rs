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

/// How far from PyTorch's training-form output repfuse's deploy form may be, in
/// multiples of PyTorch's own fusion error on the same input.
const TIMES_TORCH: f64 = 4.0;

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
        // PyTorch's own deploy form is off from its training form by
        // `max_abs_diff_torch`; a correct fusion rounds like it (measured 0.3x-2x on
        // these fixtures), a dropped BN eps is ~100x. The floor is one unit roundoff of
        // the output's precision at max|y| (PyTorch's error is a whole number of ulps,
        // sometimes 0 or 1).
        let torch = exp["max_abs_diff_torch"].as_f64().unwrap();
        let unit = if case.contains("fp16") { repfuse::verify::UNIT_F16 } else { repfuse::verify::UNIT_F32 };
        let ref_max = io["output_train"].data().iter().fold(0f64, |m, v| m.max(v.abs() as f64));
        let bound = TIMES_TORCH * torch.max(unit * ref_max);
        let s = compare(got, &io["output_train"], Tolerance::F32).unwrap();
        assert!(
            s.max_abs <= bound,
            "{}: fused output is {:.3e} from PyTorch's output_train, bound {:.3e} ({}x PyTorch's own fusion error {:.3e})",
            case,
            s.max_abs,
            bound,
            TIMES_TORCH,
            torch
        );
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
        eprintln!("{:<34} {:?} -> {:?}  max_abs {:.2e} vs torch {:.2e}", case, m.graph.op_histogram(), counts, s.max_abs, torch);
    }
}

//! The real-model corpus: timm models exported by PyTorch (`$REPFUSE_MODELS`, the
//! `timm` kind of ../shared/fixtures; not in the repository). Every test here is
//! `#[ignore]`d so a clone without the corpus lists them as ignored; scripts/test.sh
//! runs them when REPFUSE_MODELS is set, and .ci/run sets it.

mod common;

use std::path::Path;
use std::process::Command;

use repfuse::io::onnx::{read_onnx, write_onnx};
use repfuse::{fuse, FuseOptions};

fn case_name(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

/// What ONNX Runtime makes of `model` on the fixture's recorded input.
fn ort_on_fixture(model: &Path, dir: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ort_fixture.py");
    let out = Command::new(common::ort_python()).arg(script).arg(model).arg(dir.join("io.safetensors")).output().unwrap();
    assert!(out.status.success(), "{}: onnx checker / ONNX Runtime failed on what repfuse wrote:\n{}", model.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Error budget against PyTorch's training-form output: a correct fusion rounds like
/// PyTorch's own deploy form does (measured: 0.6x to 1.4x of PyTorch's own fusion
/// error on the seven timm models), so 4x leaves room for ONNX Runtime's own kernels
/// while a fold that drops the BN eps (200x on RepVGG-A0) fails.
const TIMES_TORCH: f64 = 4.0;

#[test]
#[ignore = "needs REPFUSE_MODELS=<folder of the timm fixtures>; scripts/test.sh runs it when set"]
fn corpus_onnxruntime_runs_every_fused_real_model_like_pytorch() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in common::corpus_cases() {
        let case = case_name(&dir);
        let m = read_onnx(&dir.join("train.onnx")).unwrap_or_else(|e| panic!("{}: {}", case, e));
        let f = fuse(&m.graph, &FuseOptions::default()).unwrap_or_else(|e| panic!("{}: {}", case, e));
        let w = f.weights_cpu(&m.weights).unwrap_or_else(|e| panic!("{}: {}", case, e));
        let out = tmp.path().join(format!("{}.onnx", case));
        write_onnx(Some(&m), &f.graph, &w, &out).unwrap_or_else(|e| panic!("{}: {}", case, e));
        let r = ort_on_fixture(&out, &dir);
        assert_eq!(r["shape_equal"], true, "{}: {}", case, r);
        let (err, torch) = (r["max_abs"].as_f64().unwrap(), r["torch_deploy_max_abs"].as_f64().unwrap());
        assert!(err <= TIMES_TORCH * torch, "{}: fused model in ONNX Runtime is {:.2e} from PyTorch's output, PyTorch's own fusion {:.2e}", case, err, torch);
        eprintln!("{:<18} valid, ORT max_abs {:.2e} vs PyTorch's own {:.2e} (|y| max {:.3})", case, err, torch, r["ref_abs_max"].as_f64().unwrap());
    }
}

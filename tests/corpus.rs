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

/// What ONNX Runtime makes of `model` on the fixture's recorded input, with the
/// fixture's training form's one-ulp input sensitivity.
fn ort_on_fixture(model: &Path, dir: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ort_fixture.py");
    let out = Command::new(common::ort_python()).arg(script).arg(model).arg(dir.join("io.safetensors")).arg(dir.join("train.onnx")).output().unwrap();
    assert!(out.status.success(), "{}: onnx checker / ONNX Runtime failed on what repfuse wrote:\n{}", model.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Error budget against PyTorch's training-form output: a correct fusion rounds like
/// PyTorch's own deploy form does (measured: 0.6x to 1.4x of PyTorch's own fusion
/// error on the seven timm fixtures), so 4x leaves room for ONNX Runtime's own kernels
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
        // Where repfuse folds more than PyTorch does (LCNetV2: 21 more BNs), its
        // rounding differs more from PyTorch's; then the engine's rounding bound for
        // the model applies if it is the larger, or the one from the model's measured
        // conditioning (LCNetV2-L amplifies a rounding of its input 650x).
        let t = repfuse::verify::Tolerance::for_engine(repfuse::verify::depth_all(&m.graph), repfuse::verify::UNIT_F32);
        let rounding = t.sigmas * t.unit * r["ref_abs_max"].as_f64().unwrap();
        let conditioned = repfuse::verify::SENSITIVITY_SIGMAS * r["sensitivity"].as_f64().unwrap();
        let bound = (TIMES_TORCH * torch).max(rounding).max(conditioned);
        assert!(
            err <= bound,
            "{}: fused model in ONNX Runtime is {:.2e} from PyTorch's output, PyTorch's own fusion {:.2e}, bound {:.2e}",
            case,
            err,
            torch,
            bound
        );
        eprintln!("{:<18} valid, ORT max_abs {:.2e} vs PyTorch's own {:.2e} (|y| max {:.3})", case, err, torch, r["ref_abs_max"].as_f64().unwrap());
    }
}

/// `repfuse fuse SRC -o OUT --backend BACKEND --verify --json`, which must exit 0;
/// its JSON report.
fn fuse_verified(case: &str, src: &Path, out: &Path, backend: &str) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_repfuse"))
        .arg("fuse")
        .arg(src)
        .arg("-o")
        .arg(out)
        .args(["--backend", backend, "--verify", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}: fuse --backend {} --verify: {}", case, backend, String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
#[ignore = "needs REPFUSE_MODELS=<folder of the timm fixtures>; scripts/test.sh runs it when set"]
fn corpus_fuse_verify_and_verify_check_every_real_model_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in common::corpus_cases() {
        let case = case_name(&dir);
        let src = dir.join("train.onnx");
        let out = tmp.path().join(format!("{}.onnx", case));
        let v = fuse_verified(&case, &src, &out, "cpu");
        assert!(v["verification_skipped"].is_null(), "{}: end-to-end verification skipped: {}", case, v["verification_skipped"]);
        assert!(v["verification_engine"].is_string(), "{}: no engine named", case);
        for r in v["regions"].as_array().unwrap() {
            assert!(
                r["error"].is_object() || r["covered_by"].is_string() || r["skipped"].as_str().is_some_and(|s| !s.is_empty()),
                "{}: region neither checked, inside a checked region, nor skipped with a reason: {}",
                case,
                r
            );
            assert!(!r["skipped"].as_str().is_some_and(|s| s.contains("shapes unknown")), "{}: region skipped for unknown shapes: {}", case, r);
        }
        let o = Command::new(env!("CARGO_BIN_EXE_repfuse")).arg("verify").arg(&src).arg(&out).arg("--json").output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}: verify: {}{}", case, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        eprintln!("{:<18} verify: {} max_abs {:.2e}", case, v["engine"], v["verification"]["outputs"][0][1]["max_abs"].as_f64().unwrap());
    }
}

/// The GPU plan's weights (f32 arithmetic) pass the same end-to-end and region
/// checks on every real model: LeViT-128S's averaged Linear+BN heads failed the
/// region bound made for the CPU reference's weights (1.11x) before verification
/// widened it for GPU weights (`Tolerance::for_gpu_weights`).
#[test]
#[ignore = "needs REPFUSE_MODELS=<folder of the timm fixtures> and a GPU adapter; scripts/test.sh runs it when both exist"]
fn corpus_gpu_plan_fuses_and_verifies_every_real_model() {
    common::gpu();
    let tmp = tempfile::tempdir().unwrap();
    for dir in common::corpus_cases() {
        let case = case_name(&dir);
        let out = tmp.path().join(format!("{}.onnx", case));
        let v = fuse_verified(&case, &dir.join("train.onnx"), &out, "gpu");
        assert_eq!(v["backend"], "Gpu", "{}: ran on {}", case, v["backend"]);
        assert_eq!(v["passed"], true, "{}: not verified", case);
        let worst = v["regions"].as_array().unwrap().iter().filter_map(|r| r["error"]["worst_ratio"].as_f64()).fold(0.0, f64::max);
        eprintln!("{:<18} GPU plan verified, worst region at {:.2} of its bound", case, worst);
    }
}

#[test]
#[ignore = "needs REPFUSE_MODELS=<folder of the timm fixtures>; scripts/test.sh runs it when set"]
fn corpus_a_dropped_bn_eps_fails_verification_on_every_real_model() {
    use repfuse::graph::Op;
    use repfuse::io::onnx::onnx_bytes;
    use repfuse::verify::{check_equivalence_onnx, depth_all, OnnxSource, Tolerance, UNIT_F32};
    for dir in common::corpus_cases() {
        let case = case_name(&dir);
        let m = read_onnx(&dir.join("train.onnx")).unwrap();
        let mut bad = m.graph.clone();
        for n in &mut bad.nodes {
            if let Op::BatchNorm(b) = &mut n.op {
                b.eps = 0.0;
            }
        }
        let f = fuse(&bad, &FuseOptions::default()).unwrap();
        let bytes = onnx_bytes(Some(&m), &f.graph, &f.weights_cpu(&m.weights).unwrap()).unwrap();
        let original = std::fs::read(dir.join("train.onnx")).unwrap();
        let tol = Tolerance::for_engine(depth_all(&m.graph), UNIT_F32);
        let e =
            check_equivalence_onnx(&OnnxSource { bytes: &original, dir: Some(&dir) }, &OnnxSource { bytes: &bytes, dir: Some(&dir) }, &m.graph.inputs, 7, tol)
                .unwrap()
                .equivalence;
        let ratio = e.outputs.iter().map(|(_, s)| s.worst_ratio).fold(0.0, f64::max);
        assert!(!e.passed(), "{}: a fusion without BN eps passed verification (worst {:.3} of the bound)", case, ratio);
        eprintln!("{:<18} dropped eps caught at {:.1}x the bound", case, ratio);
    }
}

/// Counts of what re-parameterization removes, in a written ONNX model: Conv,
/// BatchNormalization, Concat, and Add/Sub of two tensors computed from the input
/// (branch sums and residuals; an Add of a constant, or of a table gathered with
/// constant indices, is a bias, not a branch).
fn key_counts(bytes: &[u8]) -> std::collections::BTreeMap<&'static str, usize> {
    use onnx_protobuf::{Message, ModelProto};
    let m = ModelProto::parse_from_bytes(bytes).unwrap();
    let g = m.graph.as_ref().unwrap();
    let mut data: std::collections::HashSet<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
    let mut c = std::collections::BTreeMap::new();
    for n in &g.node {
        let from_input = n.input.iter().filter(|i| data.contains(i.as_str())).count();
        if from_input > 0 {
            data.extend(n.output.iter().map(String::as_str));
        }
        let key = match n.op_type.as_str() {
            "Conv" => "Conv",
            "BatchNormalization" => "BatchNormalization",
            "Concat" if from_input > 0 => "Concat",
            "Add" | "Sum" if from_input >= 2 => "Add(branch)",
            "Sub" if from_input >= 2 => "Sub(branch)",
            _ => continue,
        };
        *c.entry(key).or_insert(0) += 1;
    }
    c.insert("nodes", g.node.len());
    c
}

#[test]
#[ignore = "needs REPFUSE_MODELS=<folder of the timm fixtures>; scripts/test.sh runs it when set"]
fn corpus_every_real_model_reaches_pytorchs_deploy_counts() {
    for dir in common::corpus_cases() {
        let case = case_name(&dir);
        let exp: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        let m = read_onnx(&dir.join("train.onnx")).unwrap();
        let f = fuse(&m.graph, &FuseOptions::default()).unwrap();
        let bytes = repfuse::io::onnx::onnx_bytes(Some(&m), &f.graph, &f.weights_cpu(&m.weights).unwrap()).unwrap();
        let ours = key_counts(&bytes);
        let mut line = String::new();
        // Whole-graph node counts too: a folded layer written in more nodes than
        // PyTorch's deploy form uses (a Gemm between a Flatten and a Reshape where it
        // writes one MatMul) is a worse deploy model even with every BN gone.
        for key in ["Conv", "BatchNormalization", "Add(branch)", "Sub(branch)", "Concat", "nodes"] {
            let (have, want) = (ours.get(key).copied().unwrap_or(0), exp["key_deploy"][key].as_u64().unwrap_or(0) as usize);
            assert!(have <= want, "{}: {} {} after fusion, PyTorch's deploy form has {} (all: {:?})", case, key, have, want, ours);
            line += &format!(" {} {}/{}", key, have, want);
        }
        eprintln!("{:<18}{} (repfuse/PyTorch deploy)", case, line);
    }
}

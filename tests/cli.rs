//! The `repfuse` binary on the PyTorch-exported fixtures: what `fuse` writes `verify`
//! accepts, `--json` is JSON with the documented fields and agrees with the table,
//! `inspect` writes nothing, and the exit codes are 0 ok / 1 error / 2 over tolerance.
//!
//! Every run but two uses `--backend cpu`; the two `auto` runs (one fuse, one demo)
//! are tiny, so a software Vulkan adapter (lavapipe) costs little.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{fixture, fixtures_dir};

fn run_in(dir: Option<&Path>, args: &[&OsStr]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_repfuse"));
    c.args(args);
    if let Some(d) = dir {
        c.current_dir(d);
    }
    c.output().expect("run repfuse")
}

fn run(args: &[&OsStr]) -> Output {
    run_in(None, args)
}

fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> &OsStr {
    s.as_ref()
}

fn show(o: &Output) -> String {
    format!("exit {:?}\n--- stdout\n{}\n--- stderr\n{}", o.status.code(), String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn assert_exit(o: &Output, code: i32, what: &str) {
    assert_eq!(o.status.code(), Some(code), "{}: {}", what, show(o));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"), "{}: panicked: {}", what, show(o));
}

fn json(o: &Output, what: &str) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{}: stdout is not JSON ({}): {}", what, e, show(o)))
}

fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()).map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len())).collect();
    v.sort();
    v
}

/// Op-count rows of the human table: `  Conv   5   1` between the dash line and the
/// `parameters` row.
fn table_counts(stdout: &str) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let (mut before, mut after) = (BTreeMap::new(), BTreeMap::new());
    let mut in_table = false;
    for line in stdout.lines() {
        let t = line.trim();
        if !in_table {
            in_table = !t.is_empty() && t.chars().all(|c| c == '-' || c == ' ');
            continue;
        }
        if t.starts_with("parameters") || t.is_empty() {
            break;
        }
        let cols: Vec<&str> = t.split_whitespace().collect();
        assert!(cols.len() >= 3, "table row `{}` has fewer than 3 columns", line);
        let n = cols.len();
        let kind = cols[..n - 2].join(" ");
        let b: u64 = cols[n - 2].parse().unwrap_or_else(|_| panic!("row `{}`: `before` is not a number", line));
        let a: u64 = cols[n - 1].parse().unwrap_or_else(|_| panic!("row `{}`: `after` is not a number", line));
        if b > 0 {
            before.insert(kind.clone(), b);
        }
        if a > 0 {
            after.insert(kind, a);
        }
    }
    assert!(in_table, "no table in stdout:\n{}", stdout);
    (before, after)
}

fn json_counts(v: &serde_json::Value) -> BTreeMap<String, u64> {
    v.as_object()
        .unwrap_or_else(|| panic!("op counts are not an object: {}", v))
        .iter()
        .filter(|(_, n)| n.as_u64() != Some(0))
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

#[test]
fn fuse_writes_a_model_that_verify_accepts() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["z13_repvgg_bn_branch", "z14_dbb_block", "v03_external_data_dbb", "z15_linear_bn1d", "z18_grouped_repvgg"] {
        for ext in ["onnx", "json"] {
            let out = dir.path().join(format!("{}.deploy.{}", case, ext));
            let o = run(&[os("fuse"), fixture(case).as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu")]);
            assert_exit(&o, 0, &format!("fuse {} -> .{}", case, ext));
            assert!(out.exists(), "{}: nothing written at {}", case, out.display());
            if ext == "json" {
                assert!(out.with_extension("safetensors").exists(), "{}: native output without its .safetensors", case);
            }
            let o = run(&[os("verify"), fixture(case).as_os_str(), out.as_os_str()]);
            assert_exit(&o, 0, &format!("verify {} vs its .{} deploy form", case, ext));
            assert!(String::from_utf8_lossy(&o.stdout).contains("PASS"), "{}: {}", case, show(&o));
        }
    }
}

#[test]
fn fuse_verify_and_verify_agree_on_an_fp16_model() {
    // `fuse --verify` checks the fused weights in f32, then writes them in the
    // model's float16; `verify` then checks what was written. A file that `fuse
    // --verify` wrote (exit 0) must not fail `verify` (exit 2).
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("v06_fp16_repvgg_block");
    let out = dir.path().join("fp16.deploy.onnx");
    let o = run(&[os("fuse"), src.as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu"), os("--verify")]);
    assert_exit(&o, 0, "fuse --verify v06 (fp16)");
    assert!(out.exists());
    let o = run(&[os("verify"), src.as_os_str(), out.as_os_str()]);
    assert_exit(&o, 0, "verify v06 vs the deploy model `fuse --verify` accepted and wrote");
}

#[test]
fn a_float16_fold_that_loses_its_bits_is_refused_and_the_rest_still_fuses() {
    // A layer scale of 1e-5 folded into a float16 conv makes subnormal weights
    // (tests/data/forms/make.py): that region fails its check alone, so it is kept
    // as it was, with the measured error as the reason, and the conv+BN still folds.
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fp16_layer_scale.onnx");
    let out = dir.path().join("deploy.onnx");
    let o = run(&[os("fuse"), src.as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu"), os("--verify"), os("--json")]);
    assert_exit(&o, 0, "fuse --verify fp16_layer_scale");
    assert!(out.exists());
    let v = json(&o, "fuse --json");
    let refused = v["report"]["refused"].as_array().unwrap();
    assert!(
        refused.iter().any(|r| r["reason"].as_str().is_some_and(|s| s.contains("rounded to F16") && s.contains("over tolerance"))),
        "{}",
        v["report"]["refused"]
    );
    assert_eq!(v["report"]["fused"].as_array().map(Vec::len), Some(1), "the conv+BN fold stays: {}", v["report"]["fused"]);
    assert!(v["regions"].as_array().unwrap().iter().all(|r| r["error"]["over_tolerance"] == 0), "{}", v["regions"]);
    let o = run(&[os("verify"), src.as_os_str(), out.as_os_str()]);
    assert_exit(&o, 0, "verify fp16_layer_scale against what fuse --verify wrote");
    // The file's float32 constant does not make the new weights float32: ONNX Runtime
    // loads and runs what was written.
    let g = repfuse::io::onnx::read_onnx(&src).unwrap().graph;
    common::ort_agree("fp16_layer_scale", &src, &out, common::engine_bound(&g));
}

/// A float16 model with a squeeze-excite gate (ops the reference does not run) and a
/// Gemm head (which the ONNX engine cannot run in float16): `fuse --verify` checks it
/// end to end, both models widened to float32, and ONNX Runtime runs what it wrote.
#[test]
fn fuse_verify_checks_a_float16_model_with_carried_ops_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fp16_se_head.onnx");
    let out = dir.path().join("deploy.onnx");
    let o = run(&[os("fuse"), src.as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu"), os("--verify"), os("--json")]);
    assert_exit(&o, 0, "fuse --verify fp16_se_head");
    let v = json(&o, "fuse --json");
    assert!(v["verification_skipped"].is_null(), "end to end skipped: {}", v["verification_skipped"]);
    let checks = v["verifications"].as_array().unwrap();
    assert!(
        checks.iter().any(|c| c["engine"].as_str().is_some_and(|e| e.contains("widened to float32")) && c["passed"] == true),
        "no passing widened engine check: {:?}",
        checks
    );
    assert_eq!(json_counts(&v["report"]["ops_after"]).get("BatchNorm"), None, "{}", v["report"]["ops_after"]);
    let g = repfuse::io::onnx::read_onnx(&src).unwrap().graph;
    let t = repfuse::verify::Tolerance::for_engine(repfuse::verify::depth_all(&g), repfuse::verify::UNIT_F16);
    common::ort_agree("fp16_se_head", &src, &out, t.sigmas * t.unit);
}

/// A bfloat16 conv below opset 22 is not valid ONNX (PyTorch exports `.bfloat16()`
/// models so): `fuse` refuses to write its deploy form, naming the node and the
/// opset, and writes nothing; `fuse --f32` writes a float32 model ONNX Runtime runs.
#[test]
fn a_bfloat16_conv_below_opset_22_is_refused_and_f32_writes_a_valid_model() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bf16_conv_opset20.onnx");
    let out = dir.path().join("deploy.onnx");
    let o = run(&[os("fuse"), src.as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu")]);
    assert!(o.status.code().is_some_and(|c| c != 0), "bfloat16 conv at opset 20 was written: {}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("opset 22") && err.contains("opset 20") && err.contains("--f32") && err.contains("Conv"), "{}", err);
    assert!(!out.exists() && std::fs::read_dir(dir.path()).unwrap().next().is_none(), "something was written");
    let o = run(&[os("fuse"), src.as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu"), os("--f32"), os("--verify")]);
    assert_exit(&o, 0, "fuse --f32 --verify bf16_conv_opset20");
    assert!(String::from_utf8_lossy(&o.stdout).contains("PASS"), "{}", show(&o));
    // The source cannot run in ONNX Runtime; what was written runs (against itself).
    common::ort_agree("bf16_conv_opset20 --f32", &out, &out, 0.0);
}

/// tract has no bfloat16 type, so the reader's shape analysis of a bfloat16 model
/// failed and LeViT's `reshape_as` stayed Flatten + Gemm + Shape + Concat + Reshape;
/// the analysis of the model widened to float32 lifts it to one MatMul, as in float32.
#[test]
fn a_bfloat16_token_linear_fuses_like_the_float32_one() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bf16_token_linear_bn.onnx");
    let out = dir.path().join("deploy.onnx");
    let o = run(&[os("fuse"), src.as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu"), os("--verify"), os("--json")]);
    assert_exit(&o, 0, "fuse --verify bf16_token_linear_bn");
    let v = json(&o, "fuse --json");
    assert_eq!(v["passed"], true, "{}", v["verifications"]);
    let counts = repfuse::io::onnx::op_counts(&std::fs::read(&out).unwrap()).unwrap();
    for (op, want) in [("MatMul", 1), ("Shape", 0), ("Concat", 0), ("Gemm", 0), ("Flatten", 0), ("Reshape", 0), ("BatchNormalization", 0)] {
        assert_eq!(counts.get(op).copied().unwrap_or(0), want, "{}: {:?}", op, counts);
    }
}

/// `fuse --f32` of a float16 model whose gate runs in float32 between two Casts: the
/// carried Cast back to float16 is written as a Cast to float32, so the file's types
/// agree and ONNX Runtime runs it like the float16 original.
#[test]
fn fuse_f32_writes_a_carried_cast_to_float16_as_float32() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fp16_cast_gate.onnx");
    let out = dir.path().join("deploy.onnx");
    let o = run(&[os("fuse"), src.as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu"), os("--f32"), os("--verify")]);
    assert_exit(&o, 0, "fuse --f32 --verify fp16_cast_gate");
    assert!(String::from_utf8_lossy(&o.stdout).contains("PASS"), "{}", show(&o));
    let g = repfuse::io::onnx::read_onnx(&src).unwrap().graph;
    let t = repfuse::verify::Tolerance::for_engine(repfuse::verify::depth_all(&g), repfuse::verify::UNIT_F16);
    common::ort_agree("fp16_cast_gate --f32", &src, &out, t.sigmas * t.unit);
}

#[test]
fn fuse_with_verify_exits_0_and_says_pass() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let o = run(&[os("fuse"), fixture("z14_dbb_block").as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu"), os("--verify")]);
    assert_exit(&o, 0, "fuse --verify");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("PASS") && !stdout.contains("FAIL"), "{}", show(&o));
    assert!(out.exists());
}

#[test]
fn fuse_json_has_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    // The one `fuse` run with the default backend (auto).
    let o = run(&[os("fuse"), fixture("z01_conv_bn").as_os_str(), os("-o"), out.as_os_str(), os("--json")]);
    assert_exit(&o, 0, "fuse --json (auto)");
    let v = json(&o, "fuse --json");
    for field in ["ops_before", "ops_after", "refused"] {
        assert!(v["report"].get(field).is_some(), "report.{} missing: {}", field, v);
    }
    assert!(v["report"]["refused"].is_array(), "report.refused is not an array: {}", v["report"]["refused"]);
    assert!(matches!(v["backend"].as_str(), Some("Cpu" | "Gpu")), "backend: {}", v["backend"]);
    assert!(v["backend_reason"].as_str().is_some_and(|s| !s.is_empty()), "backend_reason: {}", v["backend_reason"]);
    assert_eq!(json_counts(&v["report"]["ops_before"]), BTreeMap::from([("BatchNorm".to_string(), 1), ("Conv".to_string(), 1)]));
    assert_eq!(json_counts(&v["report"]["ops_after"]), BTreeMap::from([("Conv".to_string(), 1)]));
    assert_eq!(v["written"], serde_json::json!(true));
    assert!(out.exists());

    // --verify --json carries the verification.
    let o =
        run(&[os("fuse"), fixture("z13_repvgg_bn_branch").as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu"), os("--verify"), os("--json")]);
    assert_exit(&o, 0, "fuse --verify --json");
    let v = json(&o, "fuse --verify --json");
    assert_eq!(v["backend"], serde_json::json!("Cpu"));
    assert!(v["verification"].is_object(), "verification: {}", v);
}

#[test]
fn json_and_table_report_the_same_op_counts() {
    let dir = tempfile::tempdir().unwrap();
    for case in ["z14_dbb_block", "z24_neg_avgpool_exclude_pad", "z16_conv1x1_fc_parallel"] {
        let out = dir.path().join(format!("{}.onnx", case));
        let o = run(&[os("fuse"), fixture(case).as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu"), os("--json")]);
        assert_exit(&o, 0, case);
        let v = json(&o, case);
        let o = run(&[os("fuse"), fixture(case).as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu")]);
        assert_exit(&o, 0, case);
        let (before, after) = table_counts(&String::from_utf8_lossy(&o.stdout));
        assert_eq!(before, json_counts(&v["report"]["ops_before"]), "{}: ops before, table vs --json", case);
        assert_eq!(after, json_counts(&v["report"]["ops_after"]), "{}: ops after, table vs --json", case);
        assert!(!before.is_empty() && !after.is_empty(), "{}: empty table", case);
        assert!(after.values().sum::<u64>() < before.values().sum::<u64>(), "{}: nothing fused: {:?} -> {:?}", case, before, after);
    }
}

#[test]
fn inspect_exits_0_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("v03_external_data_dbb");
    for f in ["train.onnx", "train.onnx.data"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let before = listing(dir.path());
    for json_flag in [false, true] {
        let mut args = vec![os("inspect"), os("train.onnx")];
        if json_flag {
            args.push(os("--json"));
        }
        let o = run_in(Some(dir.path()), &args);
        assert_exit(&o, 0, "inspect");
        if json_flag {
            let v = json(&o, "inspect --json");
            assert!(v["report"]["ops_before"].is_object(), "{}", v);
        } else {
            assert!(String::from_utf8_lossy(&o.stdout).contains("fusable regions"), "{}", show(&o));
        }
        assert_eq!(listing(dir.path()), before, "inspect wrote into the model's folder (its cwd)");
    }
}

#[test]
fn adapters_json_is_an_array() {
    let o = run(&[os("adapters"), os("--json")]);
    assert_exit(&o, 0, "adapters --json");
    let v = json(&o, "adapters --json");
    let rows = v.as_array().unwrap_or_else(|| panic!("not an array: {}", v));
    for r in rows {
        assert!(r["name"].is_string() && r["backend"].is_string(), "adapter row without name/backend: {}", r);
    }
}

#[test]
fn demo_small_json_passes() {
    // The one demo run with the default backend (auto).
    let o = run(&[os("demo"), os("--size"), os("32"), os("--json")]);
    assert_exit(&o, 0, "demo --size 32 --json");
    let v = json(&o, "demo --json");
    assert_eq!(v["passed"], serde_json::json!(true), "{}", v);
    assert_eq!(v["input"], serde_json::json!([1, 3, 32, 32]));
    assert!(v["backend_reason"].as_str().is_some_and(|s| !s.is_empty()));
}

#[test]
fn demo_unknown_model_exits_1() {
    let o = run(&[os("demo"), os("--model"), os("no_such_net"), os("--size"), os("32"), os("--backend"), os("cpu")]);
    assert_exit(&o, 1, "demo --model no_such_net");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no_such_net"), "{}", show(&o));
}

#[test]
fn verify_exits_2_when_two_models_differ() {
    // Same input [2, 8, 15, 15] and output [2, 16, 15, 15], different weights.
    let (a, b) = (fixture("z01_conv_bn"), fixture("z02_conv_bias_bn"));
    let o = run(&[os("verify"), a.as_os_str(), b.as_os_str()]);
    assert_exit(&o, 2, "verify z01 z02");
    assert!(String::from_utf8_lossy(&o.stdout).contains("FAIL"), "{}", show(&o));
    let o = run(&[os("verify"), a.as_os_str(), b.as_os_str(), os("--json")]);
    assert_exit(&o, 2, "verify --json z01 z02");
    assert_eq!(json(&o, "verify --json")["passed"], serde_json::json!(false));
    // A model against itself passes.
    let o = run(&[os("verify"), a.as_os_str(), a.as_os_str()]);
    assert_exit(&o, 0, "verify z01 z01");
}

#[test]
fn verify_exits_2_against_a_native_model_with_altered_weights() {
    // Fuse to the native format, then scale one deploy weight: verify must notice.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("deploy.json");
    let o = run(&[os("fuse"), fixture("z13_repvgg_bn_branch").as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu")]);
    assert_exit(&o, 0, "fuse to native");
    let (graph, mut weights) = repfuse::io::native::read_native(&out).unwrap();
    let name = graph.params.keys().find(|k| graph.params[*k].len() == 4).unwrap().clone();
    let t = weights.get(&name).unwrap();
    let data: Vec<f32> = t.data().iter().enumerate().map(|(i, v)| if i == 0 { v * 3.0 + 1.0 } else { *v }).collect();
    weights.insert(name.clone(), repfuse::Tensor::new(&name, t.shape().to_vec(), data).unwrap());
    let altered = dir.path().join("altered.json");
    repfuse::io::save_model(&altered, None, &graph, &weights).unwrap();
    let o = run(&[os("verify"), fixture("z13_repvgg_bn_branch").as_os_str(), out.as_os_str()]);
    assert_exit(&o, 0, "verify original vs deploy");
    let o = run(&[os("verify"), fixture("z13_repvgg_bn_branch").as_os_str(), altered.as_os_str()]);
    assert_exit(&o, 2, "verify original vs altered deploy");
}

#[test]
fn verify_models_with_different_inputs_is_an_error() {
    let o = run(&[os("verify"), fixture("z01_conv_bn").as_os_str(), fixture("z15_linear_bn1d").as_os_str()]);
    assert_exit(&o, 1, "verify z01 z15");
    assert!(String::from_utf8_lossy(&o.stderr).contains("different inputs"), "{}", show(&o));
}

#[test]
fn unknown_subcommand_and_bad_arguments_exit_nonzero() {
    for args in
        [vec!["frobnicate"], vec![], vec!["fuse"], vec!["fuse", "x.onnx"], vec!["fuse", "x.onnx", "-o", "y.onnx", "--backend", "tpu"], vec!["verify", "a.onnx"]]
    {
        let o = run(&args.iter().map(os).collect::<Vec<_>>());
        assert!(o.status.code().is_some_and(|c| c != 0), "{:?}: {}", args, show(&o));
        assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"), "{:?}: {}", args, show(&o));
    }
}

#[test]
fn usage_errors_do_not_use_the_over_tolerance_exit_code() {
    // `--help` documents 1 for errors and 2 for "verification over tolerance"; a
    // script that treats 2 as "the model is numerically off" must not see it for a
    // typo.
    for args in [vec!["frobnicate"], vec!["fuse", "x.onnx"], vec!["verify", "a.onnx"]] {
        let o = run(&args.iter().map(os).collect::<Vec<_>>());
        assert_exit(&o, 1, &format!("{:?}", args));
    }
}

#[test]
fn help_and_version_exit_0() {
    for args in [["--help"], ["--version"]] {
        let o = run(&args.iter().map(os).collect::<Vec<_>>());
        assert_exit(&o, 0, args[0]);
    }
    let o = run(&[os("--help")]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Exit codes"), "{}", show(&o));
}

#[test]
fn bench_runs_and_reports_its_baselines() {
    let o = run(&[os("bench"), os("--model"), os("acnet"), os("--reps"), os("1"), os("--backend"), os("cpu"), os("--json")]);
    assert_exit(&o, 0, "bench");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = &v["models"][0];
    assert_eq!(m["model"], "acnet");
    for k in ["rewrite_ms", "cpu_plan_ms", "memcpy_ms", "cpu_ratio_to_memcpy", "bytes_read", "bytes_written"] {
        assert!(m[k].as_f64().is_some_and(|x| x > 0.0), "{} = {}", k, m[k]);
    }
}

/// `bench --model FILE` times a model file's weight arithmetic like a zoo model's
/// (what it reports must describe that file); a name that is neither is refused.
#[test]
fn bench_model_takes_a_model_file_and_refuses_an_unknown_name() {
    let file = fixture("z14_dbb_block");
    let o =
        run(&[os("bench"), os("--model"), file.as_os_str(), os("--reps"), os("1"), os("--backend"), os("cpu"), os("--forward-size"), os("32"), os("--json")]);
    assert_exit(&o, 0, "bench --model FILE");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = &v["models"][0];
    assert_eq!(m["model"].as_str(), file.to_str());
    let model = repfuse::io::load_model(&file).unwrap();
    assert_eq!(m["params_train"].as_u64(), Some(model.graph.param_count() as u64));
    assert!(m["bytes_read"].as_u64().is_some_and(|b| b > 0) && m["cpu_plan_ms"].as_f64().is_some_and(|t| t > 0.0), "{}", m);
    assert!(m["forward"].is_null(), "a file has no zoo builder to rebuild at another size: {}", m);
    let o = run(&[os("bench"), os("--model"), os("no_such_model"), os("--reps"), os("1"), os("--backend"), os("cpu")]);
    assert_exit(&o, 1, "bench --model no_such_model");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no_such_model"), "{}", show(&o));
}

#[test]
fn quiet_prints_nothing_and_verbose_traces_the_stages() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let o = run(&[os("-q"), os("fuse"), fixture("z13_repvgg_bn_branch").as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu")]);
    assert_exit(&o, 0, "fuse -q");
    assert!(o.stdout.is_empty(), "-q printed: {}", show(&o));
    assert!(out.exists());
    let o = run(&[os("-v"), os("fuse"), fixture("z13_repvgg_bn_branch").as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu")]);
    assert_exit(&o, 0, "fuse -v");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("read ONNX") && err.contains("fused") && err.contains("backend"), "{}", err);
}

#[test]
fn f32_writes_a_half_model_as_float32_and_keep_dtype_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("v06_fp16_repvgg_block");
    for (flag, want) in [("--f32", 1), ("--keep-dtype", 10)] {
        let out = dir.path().join(format!("{}.onnx", &flag[2..]));
        let o = run(&[os("fuse"), src.as_os_str(), os("-o"), out.as_os_str(), os("--backend"), os("cpu"), os("--verify"), os(flag)]);
        assert_exit(&o, 0, flag);
        let m = repfuse::io::onnx::read_onnx(&out).unwrap();
        let expect = if want == 1 { repfuse::io::onnx::FloatType::F32 } else { repfuse::io::onnx::FloatType::F16 };
        assert_eq!(m.float_type, expect, "{}", flag);
        let o = run(&[os("verify"), src.as_os_str(), out.as_os_str()]);
        assert_exit(&o, 0, &format!("verify after {}", flag));
    }
    let o = run(&[os("fuse"), src.as_os_str(), os("-o"), dir.path().join("x.onnx").as_os_str(), os("--f32"), os("--keep-dtype")]);
    assert_exit(&o, 1, "--f32 with --keep-dtype");
}

/// `bench --onnx` runs a file through every stage and the whole command; what it
/// reports must describe that file (not timings: speed is measured, never asserted).
#[test]
fn bench_onnx_reports_every_stage_of_the_file_and_the_commands_memory() {
    let file = fixture("z14_dbb_block");
    let out = run(&[os("bench"), os("--onnx"), file.as_os_str(), os("--reps"), os("1"), os("--json"), os("-q")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("-q keeps --json output");
    let f = &doc["files"][0];
    assert_eq!(f["bytes_read"].as_u64(), Some(std::fs::metadata(&file).unwrap().len()));
    assert!(f["bytes_written"].as_u64().unwrap() > 0 && f["bytes_written"].as_u64() < f["bytes_read"].as_u64(), "the deploy model is smaller: {}", f);
    for k in ["read_ms", "rewrite_ms", "plan_ms", "write_ms", "copy_ms", "command_ms", "command_replace_ms"] {
        assert!(f[k].as_f64().is_some_and(|v| v > 0.0), "{} missing: {}", k, f);
    }
    if cfg!(target_os = "linux") {
        assert!(f["command_peak_rss_bytes"].as_u64().is_some_and(|r| r > 1 << 20), "no RSS from the child: {}", f);
    }
    assert!(doc["models"].as_array().unwrap().is_empty(), "--onnx alone runs no zoo models");
}

/// On a headless machine (no XDG_RUNTIME_DIR) the command prints no driver warning
/// that reads like a repfuse error; it opens the same adapters.
#[test]
fn gpu_no_spurious_driver_error_without_a_runtime_dir() {
    let out = Command::new(env!("CARGO_BIN_EXE_repfuse")).args(["adapters", "--json"]).env_remove("XDG_RUNTIME_DIR").output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "driver noise on stderr: {}", stderr);
    let adapters: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!adapters.as_array().unwrap().is_empty(), "no adapter without XDG_RUNTIME_DIR");
}

#[test]
fn a_missing_input_is_named_once_with_its_os_error_once() {
    // The reader's error already names the file and the OS error; the command must
    // not repeat either (it once printed "reading X: X: No such file (os error 2):
    // No such file (os error 2)").
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.onnx");
    for cmd in ["fuse", "inspect"] {
        let mut args = vec![os(cmd), missing.as_os_str()];
        let out = dir.path().join("out.onnx");
        if cmd == "fuse" {
            args.extend([os("-o"), out.as_os_str()]);
        }
        let o = run(&args);
        assert_exit(&o, 1, cmd);
        let err = String::from_utf8_lossy(&o.stderr);
        let name = missing.display().to_string();
        assert_eq!(err.matches(&name).count(), 1, "{}: the path should appear once: {}", cmd, err);
        assert_eq!(err.matches("os error").count(), 1, "{}: the OS error should appear once: {}", cmd, err);
    }
}

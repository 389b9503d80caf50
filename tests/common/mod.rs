//! Test helpers shared by the integration tests: where the fixtures live, the GPU
//! context, ONNX Runtime, the real-model corpus, and (in `fusion`) fusing and
//! checking graphs. Included with `mod common;`.
#![allow(dead_code)]

pub mod fusion;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use repfuse::gpu::GpuContext;

/// The small PyTorch-exported fixtures that live in the repository (byte for byte as
/// exported; see tests/data/fixtures/README.md).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixtures")
}

/// `train.onnx` of the in-repository fixture `case`.
pub fn fixture(case: &str) -> PathBuf {
    fixtures_dir().join(case).join("train.onnx")
}

/// Every in-repository fixture folder, sorted.
pub fn fixture_cases() -> Vec<PathBuf> {
    cases_in(&fixtures_dir())
}

/// Folders under `dir` that hold a `train.onnx`, sorted.
pub fn cases_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {}", dir.display(), e))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("train.onnx").exists())
        .collect();
    v.sort();
    v
}

/// The real-model corpus (timm exports, ~110 MB, not in the repository): the folders
/// of `$REPFUSE_MODELS` whose expected.json has kind `timm`. Corpus tests are
/// `#[ignore]`d; `scripts/test.sh` runs them when the variable is set, and `.ci/run`
/// sets it. Panics (never skips) when a corpus test runs without it.
pub fn corpus_cases() -> Vec<PathBuf> {
    let dir = std::env::var_os("REPFUSE_MODELS")
        .map(PathBuf::from)
        .expect("this corpus test needs REPFUSE_MODELS=<folder of timm fixtures> (e.g. ../shared/fixtures); scripts/test.sh runs it only when that is set");
    let v: Vec<PathBuf> =
        cases_in(&dir).into_iter().filter(|d| std::fs::read_to_string(d.join("expected.json")).is_ok_and(|s| s.contains("\"kind\": \"timm\""))).collect();
    assert!(!v.is_empty(), "REPFUSE_MODELS={} holds no timm fixture", dir.display());
    v
}

/// The process-wide GPU context. Panics when no adapter exists: a GPU test never
/// reports `ok` having checked nothing. `scripts/test.sh` leaves the GPU tests out
/// (by name, `--skip gpu_`) and says so loudly when the machine has no adapter.
pub fn gpu() -> &'static GpuContext {
    static CTX: OnceLock<Result<GpuContext, String>> = OnceLock::new();
    match CTX.get_or_init(|| {
        GpuContext::new().map_err(|e| e.to_string()).inspect(|c| eprintln!("GPU adapter: {} ({:?}, {:?})", c.info.name, c.info.backend, c.info.device_type))
    }) {
        Ok(c) => c,
        Err(e) => panic!("no GPU adapter ({}): install mesa-vulkan-drivers (lavapipe), or run scripts/test.sh, which leaves GPU tests out when none exists", e),
    }
}

/// A Python with onnxruntime, onnx and numpy: `$REPFUSE_PYTHON`, else `./.venv/bin/python`
/// (which scripts/test.sh creates). Panics when there is none: an ONNX Runtime test
/// never reports `ok` having checked nothing; scripts/test.sh leaves those tests out
/// (`--skip onnxruntime_`) and says so loudly when it cannot create the venv.
pub fn ort_python() -> PathBuf {
    static PY: OnceLock<Option<PathBuf>> = OnceLock::new();
    PY.get_or_init(|| {
        let candidates = [std::env::var("REPFUSE_PYTHON").ok().map(PathBuf::from), Some(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))];
        candidates
            .into_iter()
            .flatten()
            .find(|p| std::process::Command::new(p).args(["-c", "import onnxruntime, onnx, numpy"]).output().is_ok_and(|o| o.status.success()))
    })
    .clone()
    .expect("no Python with onnxruntime, onnx and numpy: set REPFUSE_PYTHON or run scripts/test.sh (it creates .venv)")
}

/// Checks `b` with onnx's full checker and runs `a` and `b` in ONNX Runtime on the
/// same seeded inputs (tests/ort_check.py); panics with the numbers unless every
/// output agrees within `bound` x max|reference| (float32 outputs; scaled by the unit
/// roundoff for others).
pub fn ort_agree(what: &str, a: &Path, b: &Path, bound: f64) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ort_check.py");
    let out = std::process::Command::new(ort_python()).arg(script).arg(a).arg(b).arg("11").arg(bound.to_string()).output().unwrap();
    assert!(out.status.success(), "{}: onnx checker / ONNX Runtime failed: {}", what, String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["same_outputs"], true, "{}: output names differ: {}", what, v);
    let outs = v["outputs"].as_array().unwrap();
    assert!(!outs.is_empty(), "{}: no outputs", what);
    for o in outs {
        assert!(o["shape_equal"] == true && o["allclose"] == true, "{}: ORT outputs differ: {}", what, o);
    }
    eprintln!("{:<36} ORT max_abs {:.3e} (|ref| max {:.3})", what, outs[0]["max_abs"].as_f64().unwrap(), outs[0]["ref_abs_max"].as_f64().unwrap());
}

/// The ONNX-engine bound (`Tolerance::for_engine`) of `g`, relative to max|reference|:
/// what two f32 runs of the same function may differ by.
pub fn engine_bound(g: &repfuse::Graph) -> f64 {
    let t = repfuse::verify::Tolerance::for_engine(repfuse::verify::depth_all(g), repfuse::verify::UNIT_F32);
    t.sigmas * t.unit
}

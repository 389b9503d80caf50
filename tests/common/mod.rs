//! Test helpers shared by the integration tests: where the fixtures live, the GPU
//! context, and the real-model corpus. Included with `mod common;`.
#![allow(dead_code)]

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

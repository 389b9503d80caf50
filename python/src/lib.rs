//! The native module `repfuse._repfuse`, wrapped by `python/repfuse/__init__.py`.
//!
//! Thin by design: models cross as ONNX bytes or file paths, results as the same JSON
//! `repfuse fuse --json` prints, and every step is `repfuse::pipeline`, the code the
//! command runs. The GIL is released while reading, fusing and verifying, so other
//! Python threads run meanwhile.

use std::path::{Path, PathBuf};

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use repfuse::io::LoadedModel;
use repfuse::pipeline::{self, DeployOptions};
use repfuse::verify::OnnxSource;
use repfuse::{Backend, FuseOptions, Fuser};

create_exception!(_repfuse, RepfuseError, PyException, "An error from repfuse: bad or unsupported input, an unwritable file, a GPU failure.");

/// A repfuse error as the Python exception, with the message the command prints.
fn py_err(e: repfuse::Error) -> PyErr {
    RepfuseError::new_err(e.to_string())
}

fn backend(name: &str) -> PyResult<Backend> {
    match name {
        "auto" => Ok(Backend::Auto),
        "gpu" => Ok(Backend::Gpu),
        "cpu" => Ok(Backend::Cpu),
        other => Err(PyValueError::new_err(format!("backend must be \"auto\", \"gpu\" or \"cpu\", not {:?}", other))),
    }
}

/// ONNX bytes: borrowed from a Python `bytes`, or a mapped file.
enum Bytes<'a> {
    Python(&'a [u8]),
    File(repfuse::io::FileBytes),
}

impl std::ops::Deref for Bytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Python(b) => b,
            Bytes::File(f) => f,
        }
    }
}

/// A model from Python: ONNX bytes (a serialized ModelProto, named `path` in
/// errors), or the file at `path`.
struct Model<'a> {
    loaded: LoadedModel,
    /// The ONNX file's bytes as read, for the ONNX engine's check.
    bytes: Option<Bytes<'a>>,
    /// Where external data resolves (the file's folder).
    dir: Option<PathBuf>,
}

impl Model<'_> {
    fn read<'a>(data: Option<&'a [u8]>, path: &Path) -> repfuse::Result<Model<'a>> {
        let dir = path.parent().map(Path::to_path_buf);
        match data {
            Some(b) => Ok(Model { loaded: repfuse::io::onnx::read_onnx_bytes(path, b)?.into(), bytes: Some(Bytes::Python(b)), dir }),
            None => {
                let (loaded, bytes) = repfuse::io::read_model(path)?;
                Ok(Model { loaded, bytes: bytes.map(Bytes::File), dir })
            }
        }
    }

    fn source(&self) -> Option<OnnxSource<'_>> {
        self.bytes.as_deref().map(|bytes| OnnxSource { bytes, dir: self.dir.as_deref() })
    }
}

/// Fuses a model. `data` is ONNX bytes (then `output` must be None and the fused
/// bytes are returned) or None (then the file `path` is read and, when every check
/// passes, the deploy model is written atomically to `output`). Returns
/// `(fused bytes or None, result JSON)`; a result over tolerance returns no bytes
/// and writes nothing, and the JSON says `"passed": false`. `inject_fault` tests the
/// verifier (see `DeployOptions::inject_fault`).
#[pyfunction]
#[pyo3(signature = (data, path, output, *, verify, backend, widen_shortcuts, compose_cost_limit, f32, inject_fault=false))]
#[allow(clippy::too_many_arguments)]
fn fuse<'py>(
    py: Python<'py>,
    data: Option<&[u8]>,
    path: PathBuf,
    output: Option<PathBuf>,
    verify: bool,
    backend: &str,
    widen_shortcuts: bool,
    compose_cost_limit: f64,
    f32: bool,
    inject_fault: bool,
) -> PyResult<(Option<Bound<'py, PyBytes>>, String)> {
    let opts = DeployOptions { fuse: FuseOptions { compose_cost_limit, widen_shortcuts, ..Default::default() }, verify, f32, inject_fault };
    let fuser = Fuser::new(self::backend(backend)?);
    let (bytes, doc) = py
        .detach(|| -> repfuse::Result<(Option<Vec<u8>>, String)> {
            let Model { loaded, bytes, dir } = Model::read(data, &path)?;
            let source = bytes.as_deref().map(|bytes| OnnxSource { bytes, dir: dir.as_deref() });
            let d = pipeline::deploy(loaded, source.as_ref(), &fuser, &opts)?;
            let mut bytes = None;
            if d.passed() {
                match &output {
                    Some(out) => d.save(out)?,
                    None => bytes = Some(d.onnx_bytes()?),
                }
            }
            Ok((bytes, d.to_json().to_string()))
        })
        .map_err(py_err)?;
    Ok((bytes.map(|b| PyBytes::new(py, &b)), doc))
}

/// Runs two models on the same seeded random inputs (the f64 reference, and the ONNX
/// engine when both are ONNX) and returns the checks as JSON.
#[pyfunction]
#[pyo3(signature = (a_data, a_path, b_data, b_path, seed))]
fn verify(py: Python<'_>, a_data: Option<&[u8]>, a_path: PathBuf, b_data: Option<&[u8]>, b_path: PathBuf, seed: u64) -> PyResult<String> {
    py.detach(|| -> repfuse::Result<String> {
        let (a, b) = (Model::read(a_data, &a_path)?, Model::read(b_data, &b_path)?);
        let checks = pipeline::compare_models(&a.loaded, a.source().as_ref(), &b.loaded, b.source().as_ref(), seed)?;
        let passed = checks.iter().all(|c| c.equivalence.passed());
        Ok(serde_json::json!({"seed": seed, "verifications": pipeline::checks_json(&checks), "passed": passed}).to_string())
    })
    .map_err(py_err)
}

/// What would be fused and refused, as JSON; nothing is computed or written.
#[pyfunction]
#[pyo3(signature = (data, path))]
fn inspect(py: Python<'_>, data: Option<&[u8]>, path: PathBuf) -> PyResult<String> {
    py.detach(|| -> repfuse::Result<String> { Ok(pipeline::inspect(&Model::read(data, &path)?.loaded)?.1.to_string()) }).map_err(py_err)
}

/// The `repfuse` command with `argv` (program name first); returns its exit code.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| repfuse::cli::run(argv))
}

#[pymodule]
fn _repfuse(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("RepfuseError", m.py().get_type::<RepfuseError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(fuse, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    Ok(())
}

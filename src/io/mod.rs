//! Model files: ONNX (as PyTorch exports it) and the native format (safetensors
//! weights plus a JSON graph). Every write is atomic: a temp file in the target
//! folder, then a rename, so a failure never leaves a half-written model.

/// Crash-safe file writes: temp file in the target folder, then a rename.
pub mod atomic;
pub mod native;
pub mod onnx;

pub use atomic::write_atomic;

use std::path::Path;

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::weights::Weights;

/// A file's bytes, mapped (no copy: the weights are decoded from the page cache).
///
/// The map is read-only (a shared file mapping nobody writes); like every reader that maps files (safetensors,
/// ONNX Runtime), it assumes the file is not truncated while it is being read.
pub enum FileBytes {
    /// A mapped file.
    Mapped(memmap2::Mmap),
    /// An empty file (a zero-length map is not portable).
    Empty,
}

impl FileBytes {
    /// Maps the file at `path`.
    pub fn open(path: &Path) -> Result<FileBytes> {
        let io = |e: std::io::Error| Error::Io { path: path.to_path_buf(), source: e };
        let f = std::fs::File::open(path).map_err(io)?;
        let meta = f.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(Error::File { path: path.to_path_buf(), why: "is not a regular file (a folder or a device?)".into() });
        }
        if meta.len() == 0 {
            return Ok(FileBytes::Empty);
        }
        // SAFETY: a read-only map of a file we opened; see the type's doc.
        // Not populated: mapping every page up front held the whole file resident
        // beside the weights decoded from it (MobileOne-S0's peak was 1.95x its file,
        // read no faster: 8.2-8.7 ms populated, 8.0-8.8 ms faulted 64 KiB at a time).
        let map = unsafe { memmap2::MmapOptions::new().map(&f) }.map_err(io)?;
        Ok(FileBytes::Mapped(map))
    }
}

impl FileBytes {
    /// Gives the pages wholly inside `range` back to the kernel (MADV_DONTNEED): their
    /// bytes leave this process's resident memory, and a later read maps them again
    /// from the page cache. The reader calls it on each weight it has decoded, so a
    /// model is not held twice (mapped and decoded) while it is read.
    pub fn release(&self, range: std::ops::Range<usize>) {
        let FileBytes::Mapped(m) = self else { return };
        let page = 4096;
        let (start, end) = (range.start.div_ceil(page) * page, (range.end.min(m.len()) / page) * page);
        if end > start {
            // SAFETY: a read-only file mapping nobody writes: the pages come back with
            // the same bytes (from the file) on the next read, so no borrow of the map
            // can observe a change. A failure only means the pages stay resident.
            let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
    }
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Empty => &[],
        }
    }
}

/// A model read from a file, with what is needed to write it back in kind.
pub struct LoadedModel {
    /// The model's structure.
    pub graph: Graph,
    /// Its parameters as f32, whatever the file stored.
    pub weights: Weights,
    /// Set for ONNX input: the writer keeps its opset, metadata, io and dtypes.
    pub onnx: Option<onnx::OnnxModel>,
}

impl From<onnx::OnnxModel> for LoadedModel {
    fn from(m: onnx::OnnxModel) -> Self {
        LoadedModel { graph: m.graph.clone(), weights: m.weights.clone(), onnx: Some(m) }
    }
}

fn is_onnx(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

fn is_native(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// Reads `.onnx`, or `.json` (native graph) with its `.safetensors` beside it.
pub fn load_model(path: &Path) -> Result<LoadedModel> {
    Ok(read_model(path)?.0)
}

/// `load_model`, also returning the mapped file for ONNX input (the ONNX engine
/// checks the file as read, external data resolved beside it).
pub fn read_model(path: &Path) -> Result<(LoadedModel, Option<FileBytes>)> {
    if is_onnx(path) {
        let bytes = FileBytes::open(path)?;
        let model = onnx::read_onnx_mapped(path, &bytes)?;
        Ok((model.into(), Some(bytes)))
    } else if is_native(path) {
        let (graph, weights) = native::read_native(path)?;
        Ok((LoadedModel { graph, weights, onnx: None }, None))
    } else {
        Err(Error::File { path: path.to_path_buf(), why: "unknown model format: expected .onnx, or .json with a .safetensors beside it".into() })
    }
}

/// Writes `.onnx` (keeping `src`'s file shape when it was ONNX) or native `.json`.
pub fn save_model(path: &Path, src: Option<&onnx::OnnxModel>, graph: &Graph, weights: &Weights) -> Result<()> {
    if is_onnx(path) {
        onnx::write_onnx(src, graph, weights, path)
    } else if is_native(path) {
        native::write_native(graph, weights, path)
    } else {
        Err(Error::File { path: path.to_path_buf(), why: "unknown output format: use .onnx or .json".into() })
    }
}

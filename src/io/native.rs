//! The native format: the graph as JSON (`model.json`) and its weights as
//! safetensors next to it (`model.safetensors`). Both files are written atomically.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::tensor::Tensor;
use crate::weights::Weights;

/// `model.json` -> `model.safetensors`.
pub fn weights_path(graph_path: &Path) -> PathBuf {
    graph_path.with_extension("safetensors")
}

/// Writes `graph_path` (JSON graph) and the `.safetensors` beside it, both atomically.
pub fn write_native(graph: &Graph, weights: &Weights, graph_path: &Path) -> Result<()> {
    let json = serde_json::to_vec_pretty(graph).map_err(|e| Error::File { path: graph_path.to_path_buf(), why: e.to_string() })?;
    let wpath = weights_path(graph_path);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = graph
        .params
        .keys()
        .filter(|k| weights.contains(k))
        .map(|k| {
            let t = weights.get(k).expect("checked");
            (k.clone(), t.shape().to_vec(), bytemuck::cast_slice(t.data()).to_vec())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, shape, b)| {
            Ok((k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b).map_err(|e| Error::tensor(k, e.to_string()))?))
        })
        .collect::<Result<_>>()?;
    let st = safetensors::serialize(views, None).map_err(|e| Error::File { path: wpath.clone(), why: e.to_string() })?;
    crate::io::atomic::write_atomic_many(&[(&wpath, &st), (graph_path, &json)])
}

/// Reads a native model: the JSON graph at `graph_path` and the `.safetensors` beside it.
pub fn read_native(graph_path: &Path) -> Result<(Graph, Weights)> {
    let json = std::fs::read(graph_path).map_err(|e| Error::Io { path: graph_path.to_path_buf(), source: e })?;
    let wpath = weights_path(graph_path);
    let bytes = std::fs::read(&wpath).map_err(|e| Error::Io { path: wpath.clone(), source: e })?;
    read_native_bytes(graph_path, &json, &bytes)
}

/// Every tensor of a safetensors file as f32 (F32, F16 and BF16 are read); `path`
/// names the file in errors.
pub fn read_safetensors(path: &Path, bytes: &[u8]) -> Result<Weights> {
    let file = |why: String| Error::File { path: path.to_path_buf(), why };
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| file(format!("not a valid safetensors file: {}", e)))?;
    let mut weights = Weights::new();
    for (name, v) in st.tensors() {
        let data: Vec<f32> = match v.dtype() {
            safetensors::Dtype::F32 => v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            safetensors::Dtype::F16 => v.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            safetensors::Dtype::BF16 => v.data().chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            d => return Err(file(format!("tensor `{}` has dtype {:?}; repfuse reads F32, F16 and BF16", name, d))),
        };
        let t = Tensor::new(&name, v.shape().to_vec(), data).map_err(|e| file(e.to_string()))?;
        weights.insert(name, t);
    }
    Ok(weights)
}

/// `read_native` on bytes already in memory; `graph_path` names the files in errors.
pub fn read_native_bytes(graph_path: &Path, json: &[u8], safetensors_bytes: &[u8]) -> Result<(Graph, Weights)> {
    let file = |p: &Path, why: String| Error::File { path: p.to_path_buf(), why };
    let graph: Graph = serde_json::from_slice(json).map_err(|e| file(graph_path, format!("not a repfuse graph file: {}", e)))?;
    let wpath = weights_path(graph_path);
    let weights = read_safetensors(&wpath, safetensors_bytes)?;
    for (name, shape) in &graph.params {
        let t = weights.get(name).map_err(|_| file(&wpath, format!("tensor `{}` named by the graph is missing", name)))?;
        if t.shape() != shape.as_slice() {
            return Err(file(&wpath, format!("tensor `{}` has shape {:?}, the graph says {:?}", name, t.shape(), shape)));
        }
    }
    Ok((graph, weights))
}

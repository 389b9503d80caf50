//! ONNX in and out. Reads what PyTorch's exporter writes for a training-form model in
//! eval mode (BatchNormalization kept), opsets 11-21, external data included; maps the
//! ops repfuse models to the IR and carries every other node through byte for byte.

mod arith;
pub(crate) mod attrs;
mod check;
mod const_fold;
mod elem_types;
mod export;
mod import;
mod matmul;
mod shape_view;
mod static_shapes;
pub mod tensor;
mod token_linear;
pub(crate) mod widen;
mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use check::check_written_model;
pub use export::{onnx_bytes, op_counts, write_onnx, write_onnx_with, EXTERNAL_DATA_THRESHOLD};
pub use import::{read_onnx, read_onnx_bytes, read_onnx_mapped, OnnxImport};
pub(crate) use shape_view::shape_analysis_view;
pub use tensor::FloatType;

use crate::graph::Graph;
use crate::weights::Weights;

/// A model read from ONNX: the IR, its f32 weights, and what the writer needs to give
/// back the same file shape (opset, metadata, inputs/outputs, dtypes, non-float
/// initializers).
#[derive(Clone, Debug)]
pub struct OnnxModel {
    /// File it was read from; external data resolves relative to its folder.
    pub path: PathBuf,
    /// The IR of the ONNX graph.
    pub graph: Graph,
    /// Float initializers, converted to f32.
    pub weights: Weights,
    /// Element type of the model's float initializers (new tensors are written in it).
    pub float_type: FloatType,
    pub(crate) proto: onnx_protobuf::ModelProto,
    /// Non-float initializers (shape tensors, indices), written back unchanged.
    pub(crate) passthrough: BTreeMap<String, onnx_protobuf::TensorProto>,
    /// Element type of each float initializer as read.
    pub(crate) dtypes: BTreeMap<String, FloatType>,
    /// Graph inputs whose batch (or other) dimension was symbolic; set to 1.
    pub dynamic_dims: Vec<String>,
}

/// A node or opset domain that is ONNX's own (empty or `ai.onnx`).
pub(crate) fn is_onnx_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// The ONNX-domain opset `m` declares, 0 where none.
pub(crate) fn onnx_opset(m: &onnx_protobuf::ModelProto) -> i64 {
    m.opset_import.iter().find(|o| is_onnx_domain(&o.domain)).map_or(0, |o| o.version)
}

/// The carried nodes of `g` as a float32 model must write them: every element type a
/// node names (a Cast to float16, a float16 Constant, subgraphs) becomes float32
/// (`widen::node_as_f32`). For `fuse --f32`, on the graph that is fused: the written
/// nodes come from it. Refused for carried ops outside the ONNX domain, whose
/// attributes repfuse cannot read.
pub fn carried_nodes_as_f32(g: &mut Graph) -> crate::Result<()> {
    for n in &mut g.nodes {
        let crate::graph::Op::Opaque(o) = &mut n.op else { continue };
        if o.payload.is_empty() {
            continue;
        }
        match widen::node_as_f32(&o.payload) {
            Ok(Some(widened)) => o.payload = widened,
            Ok(None) => {}
            Err(why) => return Err(crate::Error::unsupported(&n.name, format!("writing float32 needs every op known: {}", why))),
        }
    }
    Ok(())
}

impl OnnxModel {
    /// The same model, to be written in float32: every float initializer and the
    /// float16/bfloat16 graph inputs and outputs become float32, and so does every
    /// element type a carried node names (a Cast to float16, a float16 Constant,
    /// subgraphs: `widen::node_as_f32`). Refused for carried ops outside the ONNX
    /// domain, whose attributes repfuse cannot read.
    pub fn as_f32(&self) -> crate::Result<OnnxModel> {
        use onnx_protobuf::type_proto::Value;
        let mut m = self.clone();
        carried_nodes_as_f32(&mut m.graph)?;
        m.float_type = FloatType::F32;
        m.dtypes.values_mut().for_each(|t| *t = FloatType::F32);
        if let Some(g) = m.proto.graph.as_mut() {
            for vi in g.input.iter_mut().chain(g.output.iter_mut()) {
                if let Some(Value::TensorType(tt)) = vi.type_.as_mut().and_then(|t| t.value.as_mut()) {
                    if FloatType::from_onnx(tt.elem_type).is_some() {
                        tt.elem_type = FloatType::F32.onnx() as i32;
                    }
                }
            }
        }
        Ok(m)
    }

    /// The element type the file stores the float initializer `name` in (the model's
    /// float type for a tensor it did not have).
    pub fn dtypes_of(&self, name: &str) -> FloatType {
        self.dtypes.get(name).copied().unwrap_or(self.float_type)
    }

    /// The default-domain opset the model declares.
    pub fn opset(&self) -> i64 {
        onnx_opset(&self.proto)
    }
}

//! `Flatten`: NCHW -> N x (C*H*W) (ONNX `Flatten` with axis 1).

use onnx_protobuf::NodeProto;

use super::{check, FromOnnx, Op, OpDef, ParamShapes};
use crate::cpu::ErrorScaleArgs;
use crate::error::Result;
use crate::gpu::{GpuStep, GpuValue};
use crate::graph::Node;
use crate::io::onnx::attrs::{self, make_int, node_proto};
use crate::io::onnx::OnnxImport;
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Flattening after the batch axis (no attributes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Flatten;

impl OpDef for Flatten {
    fn kind(&self) -> &str {
        "Flatten"
    }

    fn check(&self, n: &Node, _params: &ParamShapes) -> Result<()> {
        check::inputs(n, 1)
    }

    fn output_shape(&self, n: &Node, ins: &[&Vec<usize>]) -> Result<Option<Vec<usize>>> {
        let x = check::first(n, ins)?;
        check::rank(n, x, &[2, 3, 4])?;
        Ok(Some(vec![x[0], x[1..].iter().product()]))
    }

    fn forward_cpu(&self, _n: &Node, ins: &[&Tensor], _w: &Weights) -> Result<Tensor> {
        let x = ins[0];
        let nb = x.shape()[0];
        Ok(x.reshaped(vec![nb, x.numel() / nb]).expect("same count"))
    }

    fn error_scale_sq(&self, e: &ErrorScaleArgs) -> Result<Tensor> {
        // A reshape: S moves with the data.
        e.run(e.s2, e.w)
    }

    fn forward_gpu(&self, _n: &Node, step: &mut GpuStep) -> Result<GpuValue> {
        // Same bytes, another shape.
        Ok(GpuValue::Same(step.input(0)?))
    }

    fn to_onnx(&self, n: &Node) -> Result<Vec<NodeProto>> {
        let mut p = node_proto(&n.name, "Flatten", n.inputs.clone(), n.outputs.clone());
        p.attribute = vec![make_int("axis", 1)];
        Ok(vec![p])
    }
}

impl FromOnnx for Flatten {
    const ONNX_OPS: &'static [&'static str] = &["Flatten"];

    fn from_onnx(n: &NodeProto, cx: &mut OnnxImport) -> Option<(Op, Vec<String>)> {
        (attrs::int(n, "axis", 1) == 1).then_some(())?;
        Some((Op::Flatten, vec![cx.input(n, 0)?]))
    }
}

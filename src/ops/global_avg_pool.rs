//! `GlobalAvgPool`: the mean over H and W, NCHW -> NC11 (ONNX `GlobalAveragePool`).

use onnx_protobuf::NodeProto;

use super::{check, AvgPool2d, FromOnnx, Op, OpDef, ParamShapes};
use crate::cpu::ErrorScaleArgs;
use crate::error::Result;
use crate::gpu::{GpuStep, GpuValue};
use crate::graph::Node;
use crate::io::onnx::attrs::node_proto;
use crate::io::onnx::OnnxImport;
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Mean over H and W (no attributes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GlobalAvgPool;

impl OpDef for GlobalAvgPool {
    fn kind(&self) -> &str {
        "GlobalAvgPool"
    }

    fn check(&self, n: &Node, _params: &ParamShapes) -> Result<()> {
        check::inputs(n, 1)
    }

    fn output_shape(&self, n: &Node, ins: &[&Vec<usize>]) -> Result<Option<Vec<usize>>> {
        let x = check::first(n, ins)?;
        check::rank(n, x, &[4])?;
        Ok(Some(vec![x[0], x[1], 1, 1]))
    }

    fn forward_cpu(&self, n: &Node, ins: &[&Tensor], _w: &Weights) -> Result<Tensor> {
        let x = ins[0];
        let [nb, ch, h, wd] = check::dims4(&n.name, x.shape())?;
        let out = x.data().chunks(h * wd).map(|p| (p.iter().map(|&v| v as f64).sum::<f64>() / (h * wd) as f64) as f32).collect();
        Ok(Tensor::from_parts(vec![nb, ch, 1, 1], out))
    }

    fn error_scale_sq(&self, e: &ErrorScaleArgs) -> Result<Tensor> {
        // The plane mean of S^2 (k times conservative) plus the stored output.
        Ok(e.plus_y2(e.run(e.s2, e.w)?))
    }

    fn forward_gpu(&self, n: &Node, step: &mut GpuStep) -> Result<GpuValue> {
        let xs = step.shape(&n.inputs[0])?;
        AvgPool2d::global(xs[2], xs[3]).record(n, step)
    }

    fn to_onnx(&self, n: &Node) -> Result<Vec<NodeProto>> {
        Ok(vec![node_proto(&n.name, "GlobalAveragePool", n.inputs.clone(), n.outputs.clone())])
    }
}

impl FromOnnx for GlobalAvgPool {
    const ONNX_OPS: &'static [&'static str] = &["GlobalAveragePool"];

    fn from_onnx(n: &NodeProto, cx: &mut OnnxImport) -> Option<(Op, Vec<String>)> {
        Some((Op::GlobalAvgPool, vec![cx.input(n, 0)?]))
    }
}

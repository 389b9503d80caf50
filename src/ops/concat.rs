//! `Concat`: concatenation on the channel axis (ONNX `Concat` with axis 1).

use onnx_protobuf::NodeProto;

use super::{check, FromOnnx, Op, OpDef, ParamShapes};
use crate::cpu::ErrorScaleArgs;
use crate::error::{Error, Result};
use crate::gpu::{GpuStep, GpuValue};
use crate::graph::Node;
use crate::io::onnx::attrs::{self, make_int, node_proto};
use crate::io::onnx::OnnxImport;
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Channel concatenation of the node's inputs (no attributes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Concat;

impl OpDef for Concat {
    fn kind(&self) -> &str {
        "Concat"
    }

    fn check(&self, n: &Node, _params: &ParamShapes) -> Result<()> {
        check::some_inputs(n)
    }

    fn output_shape(&self, n: &Node, ins: &[&Vec<usize>]) -> Result<Option<Vec<usize>>> {
        let first = check::first(n, ins)?;
        let mut out = first.clone();
        if out.len() < 2 {
            return Err(Error::shape(&n.name, "inputs", "Concat needs rank >= 2"));
        }
        out[1] = 0;
        for s in ins {
            if s.len() != first.len() || s[0] != first[0] || s[2..] != first[2..] {
                return Err(Error::shape(&n.name, "inputs", format!("Concat inputs differ off the channel axis: {:?} vs {:?}", first, s)));
            }
            out[1] += s[1];
        }
        Ok(Some(out))
    }

    fn forward_cpu(&self, _n: &Node, ins: &[&Tensor], _w: &Weights) -> Result<Tensor> {
        let nb = ins[0].shape()[0];
        let mut shape = ins[0].shape().to_vec();
        shape[1] = ins.iter().map(|t| t.shape()[1]).sum();
        let mut out = Vec::with_capacity(shape.iter().product());
        for b in 0..nb {
            for t in ins {
                let per = t.numel() / nb;
                out.extend_from_slice(&t.data()[b * per..][..per]);
            }
        }
        Ok(Tensor::from_parts(shape, out))
    }

    fn error_scale_sq(&self, e: &ErrorScaleArgs) -> Result<Tensor> {
        // Moves values without rounding them: S moves with the data.
        e.run(e.s2, e.w)
    }

    fn forward_gpu(&self, n: &Node, step: &mut GpuStep) -> Result<GpuValue> {
        let y = step.output()?;
        let batch = step.out_shape()[0];
        let mut at = 0u64;
        for b in 0..batch {
            for (i, t) in n.inputs.iter().enumerate() {
                let per = (step.shape(t)?.iter().product::<usize>() / batch) as u64;
                let src = step.input(i)?;
                step.copy(&src, b as u64 * per * 4, &y, at * 4, per * 4);
                at += per;
            }
        }
        Ok(GpuValue::New(y))
    }

    fn to_onnx(&self, n: &Node) -> Result<Vec<NodeProto>> {
        let mut p = node_proto(&n.name, "Concat", n.inputs.clone(), n.outputs.clone());
        p.attribute = vec![make_int("axis", 1)];
        Ok(vec![p])
    }
}

impl FromOnnx for Concat {
    const ONNX_OPS: &'static [&'static str] = &["Concat"];

    fn from_onnx(n: &NodeProto, cx: &mut OnnxImport) -> Option<(Op, Vec<String>)> {
        (attrs::int(n, "axis", 0) == 1 && n.input.iter().all(|i| !cx.is_param(i))).then(|| (Op::Concat, n.input.clone()))
    }
}

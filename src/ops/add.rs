//! `Add`: the sum of N inputs of the same shape (ONNX `Add` of two activations, or
//! `Sum`). An `Add` with a constant operand is lifted to a batch norm at import.

use onnx_protobuf::NodeProto;

use super::{check, FromOnnx, Op, OpDef, ParamShapes};
use crate::cpu::ErrorScaleArgs;
use crate::error::{Error, Result};
use crate::gpu::{GpuStep, GpuValue};
use crate::graph::Node;
use crate::io::onnx::attrs::node_proto;
use crate::io::onnx::OnnxImport;
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Sum of the node's inputs (no attributes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Add;

impl OpDef for Add {
    fn kind(&self) -> &str {
        "Add"
    }

    fn check(&self, n: &Node, _params: &ParamShapes) -> Result<()> {
        check::some_inputs(n)
    }

    fn output_shape(&self, n: &Node, ins: &[&Vec<usize>]) -> Result<Option<Vec<usize>>> {
        let first = check::first(n, ins)?;
        for s in ins {
            if *s != first {
                return Err(Error::shape(&n.name, "inputs", format!("Add inputs differ in shape: {:?} vs {:?}", first, s)));
            }
        }
        Ok(Some(first.clone()))
    }

    fn flops(&self, n: &Node, per_sample: u64) -> u64 {
        per_sample.saturating_mul(n.inputs.len().saturating_sub(1) as u64)
    }

    fn forward_cpu(&self, n: &Node, ins: &[&Tensor], _w: &Weights) -> Result<Tensor> {
        let x = ins[0];
        let mut acc: Vec<f64> = x.data().iter().map(|&v| v as f64).collect();
        for t in &ins[1..] {
            if t.shape() != x.shape() {
                return Err(Error::shape(&n.name, "inputs", format!("{:?} vs {:?}", x.shape(), t.shape())));
            }
            for (a, v) in acc.iter_mut().zip(t.data()) {
                *a += *v as f64;
            }
        }
        Ok(Tensor::from_parts(x.shape().to_vec(), acc.into_iter().map(|v| v as f32).collect()))
    }

    fn error_scale_sq(&self, e: &ErrorScaleArgs) -> Result<Tensor> {
        // Independent errors add in variance; the sum is stored once.
        let sum = e.s2[1..].iter().fold(e.s2[0].clone(), |acc, t| crate::cpu::zip(&acc, t, |a, b| a + b));
        Ok(e.plus_y2(sum))
    }

    fn forward_gpu(&self, n: &Node, step: &mut GpuStep) -> Result<GpuValue> {
        let mut acc = step.input(0)?;
        for i in 1..n.inputs.len() {
            let b = step.input(i)?;
            acc = std::rc::Rc::new(step.add2(&acc, &b)?);
        }
        Ok(GpuValue::Same(acc))
    }

    fn to_onnx(&self, n: &Node) -> Result<Vec<NodeProto>> {
        let op_type = if n.inputs.len() == 2 { "Add" } else { "Sum" };
        Ok(vec![node_proto(&n.name, op_type, n.inputs.clone(), n.outputs.clone())])
    }
}

impl FromOnnx for Add {
    const ONNX_OPS: &'static [&'static str] = &["Add", "Sum"];

    fn from_onnx(n: &NodeProto, cx: &mut OnnxImport) -> Option<(Op, Vec<String>)> {
        let ins: Vec<String> = n.input.clone();
        if ins.is_empty() || ins.iter().any(|i| i.is_empty() || cx.is_param(i)) || (n.op_type == "Add" && ins.len() != 2) {
            return None;
        }
        Some((Op::Add, ins))
    }
}

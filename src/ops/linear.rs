//! `Linear`: a fully connected layer (ONNX `Gemm`, or `MatMul` on a rank-2 input
//! with its bias `Add`).

use onnx_protobuf::NodeProto;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{check, FromOnnx, Op, OpDef, ParamShapes};
use crate::cpu::ErrorScaleArgs;
use crate::error::{Error, Result};
use crate::gpu::{GpuStep, GpuValue, KernelId, LinearParams};
use crate::graph::Node;
use crate::io::onnx::attrs::{self, make_int, node_proto};
use crate::io::onnx::OnnxImport;
use crate::tensor::Tensor;
use crate::weights::Weights;

/// `y = x W^T + b`, weight `[out, in]` (PyTorch/ONNX Gemm with transB=1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    /// Weight tensor name, `[out_features, in_features]`.
    pub weight: String,
    /// Bias tensor name `[out_features]`, if any.
    pub bias: Option<String>,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
}

impl OpDef for Linear {
    fn kind(&self) -> &str {
        "Linear"
    }

    fn params(&self) -> Vec<&str> {
        std::iter::once(self.weight.as_str()).chain(self.bias.as_deref()).collect()
    }

    fn check(&self, n: &Node, params: &ParamShapes) -> Result<()> {
        check::inputs(n, 1)?;
        check::positive(n, "features", &[self.in_features, self.out_features])?;
        check::param(n, params, "weight", &self.weight, &[self.out_features, self.in_features])?;
        if let Some(b) = &self.bias {
            check::param(n, params, "bias", b, &[self.out_features])?;
        }
        Ok(())
    }

    fn output_shape(&self, n: &Node, ins: &[&Vec<usize>]) -> Result<Option<Vec<usize>>> {
        let x = check::first(n, ins)?;
        check::rank(n, x, &[2])?;
        if x[1] != self.in_features {
            return Err(Error::shape(&n.name, "in_features", format!("expects {} features, input has shape {:?}", self.in_features, x)));
        }
        Ok(Some(vec![x[0], self.out_features]))
    }

    fn flops(&self, _n: &Node, per_sample: u64) -> u64 {
        per_sample.saturating_mul(2).saturating_mul(self.in_features as u64)
    }

    fn reduction_len(&self) -> Option<usize> {
        Some(self.in_features)
    }

    fn forward_cpu(&self, _n: &Node, ins: &[&Tensor], w: &Weights) -> Result<Tensor> {
        let x = ins[0];
        let wt = w.get(&self.weight)?.data();
        let bias = self.bias.as_deref().map(|b| w.get(b)).transpose()?;
        let nb = x.shape()[0];
        let (fi, fo) = (self.in_features, self.out_features);
        let mut out = vec![0f32; nb * fo];
        out.par_chunks_mut(fo).enumerate().for_each(|(b, row)| {
            let xin = &x.data()[b * fi..][..fi];
            for (o, y) in row.iter_mut().enumerate() {
                let mut acc = bias.map_or(0.0, |t| t.data()[o] as f64);
                for (wv, xv) in wt[o * fi..][..fi].iter().zip(xin) {
                    acc += *wv as f64 * *xv as f64;
                }
                *y = acc as f32;
            }
        });
        Ok(Tensor::from_parts(vec![nb, fo], out))
    }

    fn error_scale_sq(&self, e: &ErrorScaleArgs) -> Result<Tensor> {
        e.through_squared_params()
    }

    fn forward_gpu(&self, _n: &Node, step: &mut GpuStep) -> Result<GpuValue> {
        let u = GpuStep::u32;
        let p = LinearParams { n: u(step.out_shape()[0]), fin: u(self.in_features), fout: u(self.out_features), has_bias: self.bias.is_some() as u32 };
        let x = step.input(0)?;
        let w = step.param(&self.weight)?;
        let b = self.bias.as_deref().map(|b| step.param(b)).transpose()?;
        let y = step.output()?;
        let dummy = step.dummy();
        step.dispatch(KernelId::Linear, &p, &[&*x, &*w, b.as_deref().unwrap_or(&*dummy), &y])?;
        Ok(GpuValue::New(y))
    }

    fn to_onnx(&self, n: &Node) -> Result<Vec<NodeProto>> {
        let mut p = node_proto(&n.name, "Gemm", n.inputs.clone(), n.outputs.clone());
        p.input.push(self.weight.clone());
        p.input.extend(self.bias.clone());
        p.attribute = vec![make_int("transB", 1)];
        Ok(vec![p])
    }
}

impl FromOnnx for Linear {
    const ONNX_OPS: &'static [&'static str] = &["Gemm", "MatMul"];

    fn from_onnx(n: &NodeProto, cx: &mut OnnxImport) -> Option<(Op, Vec<String>)> {
        let (x, w) = (cx.input(n, 0)?, cx.input(n, 1)?);
        if cx.float_param_shape(&w)?.len() != 2 {
            return None;
        }
        let (weight, bias) = if n.op_type == "Gemm" {
            if attrs::int(n, "transA", 0) != 0 || attrs::float(n, "alpha", 1.0) != 1.0 || attrs::float(n, "beta", 1.0) != 1.0 {
                return None;
            }
            let weight = if attrs::int(n, "transB", 0) == 1 { w } else { cx.transposed(&w)? };
            (weight, cx.input(n, 2))
        } else {
            // MatMul(x, W) is a Linear on a rank-2 x, with the bias of the Add that
            // alone reads its product (the reader passes it in).
            if !cx.is_rank2(&x) {
                return None;
            }
            (cx.transposed(&w)?, cx.matmul_bias().map(str::to_string))
        };
        let [out, in_features] = <[usize; 2]>::try_from(cx.float_param_shape(&weight)?.as_slice()).ok()?;
        if bias.as_ref().is_some_and(|b| cx.float_param_shape(b) != Some(&vec![out])) {
            return None;
        }
        Some((Op::Linear(Linear { weight, bias, in_features, out_features: out }), vec![x]))
    }
}

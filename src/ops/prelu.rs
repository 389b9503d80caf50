//! `PRelu`: `y = x` where `x >= 0`, else `slope * x`, with a constant slope (ONNX
//! `PRelu` whose slope is an initializer; PyTorch's `nn.PReLU(num_parameters)` exports
//! `[C, 1, ..., 1]` or `[1]`). The slope broadcasts as ONNX says; the GPU forward
//! runs slopes per channel or shared (a per-channel piecewise affine) and refuses
//! others by name. A slope computed at run time is carried unchanged.

use onnx_protobuf::NodeProto;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{check, FromOnnx, Op, OpDef, ParamShapes};
use crate::cpu::ErrorScaleArgs;
use crate::error::{Error, Result};
use crate::gpu::{GpuStep, GpuValue};
use crate::graph::Node;
use crate::io::onnx::attrs::node_proto;
use crate::io::onnx::OnnxImport;
use crate::tensor::Tensor;
use crate::weights::Weights;

/// PReLU with a constant slope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PRelu {
    /// Slope tensor name.
    pub slope: String,
    /// Its shape: it broadcasts to the input as ONNX does (aligned to the last axes).
    pub slope_shape: Vec<usize>,
}

impl PRelu {
    /// The index into the slope of each flat input index, for input shape `x`
    /// (ONNX unidirectional broadcasting: the slope's axes line up with x's last).
    fn slope_index(&self, x: &[usize]) -> impl Fn(usize) -> usize {
        let (r, k) = (x.len(), self.slope_shape.len());
        let mut strides = vec![0usize; r];
        let mut s = 1;
        for j in (0..k).rev() {
            if self.slope_shape[j] != 1 {
                strides[r - k + j] = s;
            }
            s *= self.slope_shape[j];
        }
        let dims = x.to_vec();
        move |mut i| {
            let mut at = 0;
            for j in (0..dims.len()).rev() {
                at += (i % dims[j]) * strides[j];
                i /= dims[j];
            }
            at
        }
    }

    /// One slope per channel of an input of shape `x` (the slope varies along axis 1
    /// at most), or None when it varies along another axis.
    fn per_channel(&self, slope: &[f32], x: &[usize]) -> Option<Vec<f32>> {
        let (r, k) = (x.len(), self.slope_shape.len());
        let varies_off_channel = self.slope_shape.iter().enumerate().any(|(j, &d)| d != 1 && r - k + j != 1);
        if varies_off_channel || r < 2 {
            return None;
        }
        let index = self.slope_index(x);
        let inner: usize = x[2..].iter().product();
        Some((0..x[1]).map(|c| slope[index(c * inner)]).collect())
    }
}

impl OpDef for PRelu {
    fn kind(&self) -> &str {
        "PRelu"
    }

    fn params(&self) -> Vec<&str> {
        vec![&self.slope]
    }

    fn check(&self, n: &Node, params: &ParamShapes) -> Result<()> {
        check::inputs(n, 1)?;
        check::param(n, params, "slope", &self.slope, &self.slope_shape)
    }

    fn output_shape(&self, n: &Node, ins: &[&Vec<usize>]) -> Result<Option<Vec<usize>>> {
        let x = check::first(n, ins)?;
        let (r, k) = (x.len(), self.slope_shape.len());
        if k > r || self.slope_shape.iter().enumerate().any(|(j, &d)| d != 1 && d != x[r - k + j]) {
            return Err(Error::shape(&n.name, "slope", format!("slope of shape {:?} does not broadcast to input {:?}", self.slope_shape, x)));
        }
        Ok(Some(x.clone()))
    }

    fn flops(&self, _n: &Node, per_sample: u64) -> u64 {
        per_sample
    }

    fn forward_cpu(&self, _n: &Node, ins: &[&Tensor], w: &Weights) -> Result<Tensor> {
        let x = ins[0];
        let (slope, index) = (w.get(&self.slope)?.data(), self.slope_index(x.shape()));
        let out = x.data().par_iter().enumerate().map(|(i, &v)| if v < 0.0 { (v as f64 * slope[index(i)] as f64) as f32 } else { v }).collect();
        Ok(Tensor::from_parts(x.shape().to_vec(), out))
    }

    fn error_scale_sq(&self, e: &ErrorScaleArgs) -> Result<Tensor> {
        // Its slope at x (1, or the slope) carries the input's error; the product is
        // stored: k^2 S(x)^2 + y^2.
        let (slope, index) = (e.w.get(&self.slope)?.data(), self.slope_index(e.x[0].shape()));
        let d = e.s2[0]
            .data()
            .iter()
            .zip(e.x[0].data())
            .enumerate()
            .map(|(i, (s, v))| if *v < 0.0 { (*s as f64 * (slope[index(i)] as f64).powi(2)) as f32 } else { *s })
            .collect();
        Ok(e.plus_y2(Tensor::from_parts(e.y.shape().to_vec(), d)))
    }

    fn forward_gpu(&self, n: &Node, step: &mut GpuStep) -> Result<GpuValue> {
        let x = step.shape(&n.inputs[0])?;
        let slope = self
            .per_channel(step.weights().get(&self.slope)?.data(), &x)
            .ok_or_else(|| Error::unsupported(&n.name, format!("the GPU forward runs PRelu slopes that vary along axis 1 only, not {:?}", self.slope_shape)))?;
        let (ones, zeros) = (vec![1.0; slope.len()], vec![0.0; slope.len()]);
        step.channel_affine(&ones, &slope, &zeros)
    }

    fn to_onnx(&self, n: &Node) -> Result<Vec<NodeProto>> {
        Ok(vec![node_proto(&n.name, "PRelu", vec![n.inputs[0].clone(), self.slope.clone()], n.outputs.clone())])
    }
}

impl FromOnnx for PRelu {
    const ONNX_OPS: &'static [&'static str] = &["PRelu"];

    fn from_onnx(n: &NodeProto, cx: &mut OnnxImport) -> Option<(Op, Vec<String>)> {
        let (x, slope) = (cx.input(n, 0)?, cx.input(n, 1)?);
        let slope_shape = cx.float_param_shape(&slope)?.clone();
        Some((Op::PRelu(PRelu { slope, slope_shape }), vec![x]))
    }
}

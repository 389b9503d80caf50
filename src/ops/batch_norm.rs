//! `BatchNorm`: inference-mode batch norm over axis 1 (ONNX `BatchNormalization`),
//! and the stand-in for a per-channel affine node of the source file.

use onnx_protobuf::{Message, NodeProto};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{check, FromOnnx, Op, OpDef, ParamShapes};
use crate::cpu::ErrorScaleArgs;
use crate::error::{Error, Result};
use crate::gpu::{GpuStep, GpuValue};
use crate::graph::Node;
use crate::io::onnx::attrs::{self, make_float, node_proto};
use crate::io::onnx::OnnxImport;
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Inference-mode batch norm over axis 1 (2d on NCHW, 1d on NC).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm {
    /// Scale tensor name `[channels]`.
    pub gamma: String,
    /// Shift tensor name `[channels]`.
    pub beta: String,
    /// Running mean tensor name `[channels]`.
    pub mean: String,
    /// Running variance tensor name `[channels]`.
    pub var: String,
    /// Added to the variance before the square root.
    pub eps: f32,
    /// Channel count (size of axis 1).
    pub channels: usize,
    /// Set when this batch norm stands for another node of the source file (an ONNX
    /// Mul/Add/Sub/Div by a per-channel constant, or a Neg): writers give that node
    /// back, as it was, when the batch norm survives fusion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_as: Option<WrittenAs>,
}

/// The source node a stand-in op is written back as (see `BatchNorm::written_as`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WrittenAs {
    /// The node's encoding in the source format (an ONNX NodeProto).
    pub payload: Vec<u8>,
    /// Which of the node's inputs is the data tensor (rewired to the op's input).
    pub data_input: usize,
    /// Parameters the node reads (kept in the graph while the op lives).
    pub reads: Vec<String>,
}

impl BatchNorm {
    /// Per channel `(s, t)` with `y = s * x + t`, in f64.
    pub fn scale_shift(&self, w: &Weights) -> Result<Vec<(f64, f64)>> {
        let (g, be, m, v) = (w.get(&self.gamma)?.data(), w.get(&self.beta)?.data(), w.get(&self.mean)?.data(), w.get(&self.var)?.data());
        Ok((0..self.channels).map(|c| crate::cpu::primitives::bn_affine(g[c], be[c], m[c], v[c], self.eps)).collect())
    }
}

/// Elements per channel plane of a batch-first tensor of `numel` elements.
fn inner(shape: &[usize], channels: usize) -> usize {
    (shape.iter().product::<usize>() / (shape[0] * channels).max(1)).max(1)
}

impl OpDef for BatchNorm {
    fn kind(&self) -> &str {
        "BatchNorm"
    }

    fn params(&self) -> Vec<&str> {
        let mut v: Vec<&str> = vec![&self.gamma, &self.beta, &self.mean, &self.var];
        v.extend(self.written_as.iter().flat_map(|w| w.reads.iter().map(String::as_str)));
        v
    }

    fn check(&self, n: &Node, params: &ParamShapes) -> Result<()> {
        check::inputs(n, 1)?;
        check::positive(n, "channels", &[self.channels])?;
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(Error::shape(&n.name, "epsilon", format!("must be finite and >= 0, got {}", self.eps)));
        }
        for (field, p) in [("scale", &self.gamma), ("bias", &self.beta), ("mean", &self.mean), ("var", &self.var)] {
            check::param(n, params, field, p, &[self.channels])?;
        }
        Ok(())
    }

    fn output_shape(&self, n: &Node, ins: &[&Vec<usize>]) -> Result<Option<Vec<usize>>> {
        let x = check::first(n, ins)?;
        check::rank(n, x, &[2, 3, 4])?;
        check::channels(n, x, self.channels)?;
        Ok(Some(x.clone()))
    }

    fn flops(&self, _n: &Node, per_sample: u64) -> u64 {
        per_sample.saturating_mul(2)
    }

    fn forward_cpu(&self, _n: &Node, ins: &[&Tensor], w: &Weights) -> Result<Tensor> {
        let x = ins[0];
        let st = self.scale_shift(w)?;
        let ch = self.channels;
        let mut out = x.data().to_vec();
        out.par_chunks_mut(inner(x.shape(), ch)).enumerate().for_each(|(i, plane)| {
            let (s, t) = st[i % ch];
            for p in plane {
                *p = (*p as f64 * s + t) as f32;
            }
        });
        Ok(Tensor::from_parts(x.shape().to_vec(), out))
    }

    fn error_scale_sq(&self, e: &ErrorScaleArgs) -> Result<Tensor> {
        // y = s*x + t: S(y)^2 = s^2 (S(x)^2 + x^2) + t^2 + y^2.
        let st = self.scale_shift(e.w)?;
        let inner = inner(e.x[0].shape(), self.channels);
        let (sig, y2) = (e.signal(), e.y2());
        let out = sig
            .data()
            .iter()
            .zip(y2.data())
            .enumerate()
            .map(|(i, (sx, yy))| {
                let (s, t) = st[(i / inner) % self.channels];
                (s * s * *sx as f64 + t * t) as f32 + yy
            })
            .collect();
        Ok(Tensor::from_parts(e.y.shape().to_vec(), out))
    }

    fn forward_gpu(&self, _n: &Node, step: &mut GpuStep) -> Result<GpuValue> {
        let (s, t): (Vec<f32>, Vec<f32>) = self.scale_shift(step.weights())?.into_iter().map(|(s, t)| (s as f32, t as f32)).unzip();
        step.channel_affine(&s, &s, &t)
    }

    fn to_onnx(&self, n: &Node) -> Result<Vec<NodeProto>> {
        if let Some(w) = &self.written_as {
            let mut q = NodeProto::parse_from_bytes(&w.payload).map_err(|e| Error::unsupported(&n.name, format!("carried node cannot be decoded: {}", e)))?;
            if w.data_input >= q.input.len() {
                return Err(Error::unsupported(&n.name, "carried node has no data input at the recorded position"));
            }
            q.input[w.data_input] = n.inputs[0].clone();
            q.output = n.outputs.clone();
            return Ok(vec![q]);
        }
        let mut p = node_proto(&n.name, "BatchNormalization", n.inputs.clone(), n.outputs.clone());
        p.input.extend([self.gamma.clone(), self.beta.clone(), self.mean.clone(), self.var.clone()]);
        p.attribute = vec![make_float("epsilon", self.eps)];
        Ok(vec![p])
    }
}

impl FromOnnx for BatchNorm {
    const ONNX_OPS: &'static [&'static str] = &["BatchNormalization"];

    fn from_onnx(n: &NodeProto, cx: &mut OnnxImport) -> Option<(Op, Vec<String>)> {
        let names: Vec<String> = (1..5).map(|i| cx.input(n, i)).collect::<Option<_>>()?;
        if !names.iter().all(|p| cx.float_param_shape(p).is_some_and(|s| s.len() == 1))
            || attrs::int(n, "training_mode", 0) != 0
            || n.output.iter().skip(1).any(|o| !o.is_empty())
        {
            return None;
        }
        let channels = cx.float_param_shape(&names[0])?[0];
        let bn = BatchNorm {
            gamma: names[0].clone(),
            beta: names[1].clone(),
            mean: names[2].clone(),
            var: names[3].clone(),
            eps: attrs::float(n, "epsilon", 1e-5),
            channels,
            written_as: None,
        };
        Some((Op::BatchNorm(bn), vec![cx.input(n, 0)?]))
    }
}

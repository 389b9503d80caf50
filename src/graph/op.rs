//! The ops of the network IR. Parameters are referenced by name (see `Weights`), so a
//! graph is pure structure and the rewrite engine can plan without touching data.

use serde::{Deserialize, Serialize};

/// A 2D convolution, OIHW kernel `[out, in/groups, kh, kw]`. Pads are per side
/// (top, left, bottom, right) because ONNX allows asymmetric padding and the exact
/// alignment of merged kernels depends on each side separately.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    pub weight: String,
    pub bias: Option<String>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub pads: [usize; 4],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Conv2d {
    /// Weight shape this conv expects.
    pub fn weight_shape(&self) -> Vec<usize> {
        vec![self.out_channels, self.in_channels / self.groups.max(1), self.kernel[0], self.kernel[1]]
    }
    pub fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1]
    }
    pub fn has_padding(&self) -> bool {
        self.pads.iter().any(|&p| p > 0)
    }
}

/// Inference-mode batch norm over axis 1 (2d on NCHW, 1d on NC).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm {
    pub gamma: String,
    pub beta: String,
    pub mean: String,
    pub var: String,
    pub eps: f32,
    pub channels: usize,
}

/// `y = x W^T + b`, weight `[out, in]` (PyTorch/ONNX Gemm with transB=1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    pub weight: String,
    pub bias: Option<String>,
    pub in_features: usize,
    pub out_features: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AvgPool2d {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub pads: [usize; 4],
    pub count_include_pad: bool,
    pub ceil_mode: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Activation {
    Relu,
    LeakyRelu(f32),
    Sigmoid,
    Tanh,
    Gelu,
    Silu,
    HardSwish,
    HardSigmoid,
}

/// Any op repfuse does not model. It is carried through untouched; `payload` keeps
/// the source format's encoding of the node (e.g. ONNX NodeProto bytes) for writers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Opaque {
    pub op_type: String,
    #[serde(default)]
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Conv2d(Conv2d),
    BatchNorm(BatchNorm),
    Linear(Linear),
    AvgPool2d(AvgPool2d),
    GlobalAvgPool,
    /// Sum of N inputs of the same shape.
    Add,
    /// Concatenation on the channel axis (1).
    Concat,
    Activation(Activation),
    /// NCHW -> N x (C*H*W).
    Flatten,
    Opaque(Opaque),
}

impl Op {
    /// Short kind name for reports and op histograms.
    pub fn kind(&self) -> &str {
        match self {
            Op::Conv2d(_) => "Conv",
            Op::BatchNorm(_) => "BatchNorm",
            Op::Linear(_) => "Linear",
            Op::AvgPool2d(_) => "AvgPool",
            Op::GlobalAvgPool => "GlobalAvgPool",
            Op::Add => "Add",
            Op::Concat => "Concat",
            Op::Activation(_) => "Activation",
            Op::Flatten => "Flatten",
            Op::Opaque(o) => &o.op_type,
        }
    }

    /// Names of the parameter tensors this op reads.
    pub fn params(&self) -> Vec<&str> {
        match self {
            Op::Conv2d(c) => std::iter::once(c.weight.as_str()).chain(c.bias.as_deref()).collect(),
            Op::Linear(l) => std::iter::once(l.weight.as_str()).chain(l.bias.as_deref()).collect(),
            Op::BatchNorm(b) => vec![&b.gamma, &b.beta, &b.mean, &b.var],
            _ => vec![],
        }
    }
}

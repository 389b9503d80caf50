//! The ops of the network IR. Parameters are referenced by name (see `Weights`), so a
//! graph is pure structure and the rewrite engine can plan without touching data.

use serde::{Deserialize, Serialize};

/// A 2D convolution, OIHW kernel `[out, in/groups, kh, kw]`. Pads are per side
/// (top, left, bottom, right) because ONNX allows asymmetric padding and the exact
/// alignment of merged kernels depends on each side separately.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    /// Kernel tensor name, `[out, in/groups, kh, kw]`.
    pub weight: String,
    /// Bias tensor name `[out]`, if any.
    pub bias: Option<String>,
    /// Input channels (C of the NCHW input).
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Padding `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    /// Dilation `[dh, dw]`.
    pub dilation: [usize; 2],
    /// Group count; divides both channel counts.
    pub groups: usize,
}

impl Conv2d {
    /// Weight shape this conv expects.
    pub fn weight_shape(&self) -> Vec<usize> {
        vec![self.out_channels, self.in_channels / self.groups.max(1), self.kernel[0], self.kernel[1]]
    }
    /// A 1x1 kernel: fuses with any other kernel by composition.
    pub fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1]
    }
    /// Any side padded by more than zero.
    pub fn has_padding(&self) -> bool {
        self.pads.iter().any(|&p| p > 0)
    }
}

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

/// 2D average pooling over NCHW (ONNX AveragePool).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AvgPool2d {
    /// Window size `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Padding `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    /// Divide by the full window even where it overlaps padding; only then is the pool a conv.
    pub count_include_pad: bool,
    /// Round the output size up instead of down.
    pub ceil_mode: bool,
}

/// Pointwise nonlinearity; never fused into weights, only into a conv's GPU dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `x` if positive, else `alpha * x`, with the given alpha.
    LeakyRelu(f32),
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// Gaussian error linear unit.
    Gelu,
    /// `x * sigmoid(x)` (swish).
    Silu,
    /// `x * relu6(x + 3) / 6`.
    HardSwish,
    /// `relu6(x + 3) / 6`.
    HardSigmoid,
}

/// Any op repfuse does not model. It is carried through untouched; `payload` keeps
/// the source format's encoding of the node (e.g. ONNX NodeProto bytes) for writers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Opaque {
    /// Source-format op name (e.g. ONNX `op_type`), shown in reports.
    pub op_type: String,
    /// Source-format encoding of the node; empty when built in memory.
    #[serde(default)]
    pub payload: Vec<u8>,
    /// What the reader knows of its output shape beyond the op name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape_hint: Option<ShapeHint>,
    /// Why the reader carried it instead of modelling it, for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// How a carried node's output shape follows from its input's, read from its
/// attributes (elementwise ops need none: they broadcast).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ShapeHint {
    /// A reduction over `axes` (negative counts from the end), kept as size 1 or
    /// dropped: ONNX ReduceMean/ReduceSum/ReduceMax/... with an `axes` attribute.
    Reduce {
        /// Reduced axes.
        axes: Vec<i64>,
        /// Reduced axes stay, with size 1.
        keepdims: bool,
    },
    /// ONNX Flatten at `axis`: `[prod(dims[..axis]), prod(dims[axis..])]`.
    Flatten {
        /// Where the second output axis starts (negative counts from the end).
        axis: i64,
    },
}

/// One node's operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// 2D convolution.
    Conv2d(Conv2d),
    /// Inference-mode batch norm.
    BatchNorm(BatchNorm),
    /// Fully connected layer.
    Linear(Linear),
    /// 2D average pooling.
    AvgPool2d(AvgPool2d),
    /// Mean over H and W, NCHW -> NC11.
    GlobalAvgPool,
    /// Sum of N inputs of the same shape.
    Add,
    /// Concatenation on the channel axis (1).
    Concat,
    /// Pointwise activation.
    Activation(Activation),
    /// NCHW -> N x (C*H*W).
    Flatten,
    /// An op passed through untouched.
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
            Op::BatchNorm(b) => {
                let mut v: Vec<&str> = vec![&b.gamma, &b.beta, &b.mean, &b.var];
                v.extend(b.written_as.iter().flat_map(|w| w.reads.iter().map(String::as_str)));
                v
            }
            _ => vec![],
        }
    }
}

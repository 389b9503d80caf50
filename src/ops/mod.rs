//! Every op of the IR, one file each. A file holds all there is to know about its
//! op: the attributes (the op's struct), validation, shape inference, FLOPs, the CPU
//! reference forward and its rounding-error scale, the GPU forward (which kernel, with
//! which parameters), and the ONNX mapping both ways. The op implements [`OpDef`] and
//! is registered by one line in the `ops!` table below, which generates the [`Op`]
//! enum, the dispatch to each op's `OpDef`, and the ONNX import table.
//!
//! The fusion rules (`src/fuse/`) still match on `Op` variants: a rule is about a
//! pattern of several ops, so it belongs to the rule, not to any one op.

pub(crate) mod check;

use onnx_protobuf::NodeProto;
use serde::{Deserialize, Serialize};

pub use batch_norm::WrittenAs;
pub use opaque::ShapeHint;

use crate::cpu::ErrorScaleArgs;
use crate::error::Result;
use crate::gpu::{GpuStep, GpuValue};
use crate::graph::Node;
use crate::io::onnx::OnnxImport;
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Parameter tensor name -> shape (`Graph::params`), in the order the parameters
/// were added (which is deterministic: the source file's order, then the rewrite's).
/// Hashed, not ordered by name: every op check, shape inference and rewrite looks
/// parameters up by name, and the ordered map's comparisons of long names with
/// shared prefixes (`stages.2.blocks.3.conv_kxk.1.bn.running_var`) were a tenth of
/// MobileOne's rewrite and grew with the logarithm of the graph.
pub type ParamShapes = indexmap::IndexMap<String, Vec<usize>, foldhash::fast::RandomState>;

/// What one op is, everywhere repfuse meets it. `n` is always the node holding the op
/// (its name goes into every error, its inputs and outputs are the tensors).
pub trait OpDef {
    /// Short kind name for reports and op histograms.
    fn kind(&self) -> &str;

    /// Names of the parameter tensors this op reads.
    fn params(&self) -> Vec<&str> {
        Vec::new()
    }

    /// Attributes, input count and parameter shapes are consistent (errors name the
    /// node and field).
    fn check(&self, n: &Node, params: &ParamShapes) -> Result<()>;

    /// Output shape from the input shapes, or None where it cannot be known.
    fn output_shape(&self, n: &Node, ins: &[&Vec<usize>]) -> Result<Option<Vec<usize>>>;

    /// 2 x multiply-accumulates per sample, given the output's per-sample size.
    fn flops(&self, _n: &Node, _out_per_sample: u64) -> u64 {
        0
    }

    /// Terms summed for one output element where the op sums in f32 on a GPU (conv
    /// `Cin/groups * kh * kw`, linear `in`); None for ops that do not reduce. Sizes
    /// the verification tolerance of a GPU forward.
    fn reduction_len(&self) -> Option<usize> {
        None
    }

    /// The CPU reference forward (f32 tensors, f64 arithmetic).
    fn forward_cpu(&self, n: &Node, ins: &[&Tensor], w: &Weights) -> Result<Tensor>;

    /// `S(y)^2`, the squared rounding-error scale of the output (see
    /// `src/cpu/error_scale.rs` for the model).
    fn error_scale_sq(&self, e: &ErrorScaleArgs) -> Result<Tensor>;

    /// Records the GPU forward of the node into `step`.
    fn forward_gpu(&self, n: &Node, step: &mut GpuStep) -> Result<GpuValue>;

    /// The ONNX node(s) the op is written as.
    fn to_onnx(&self, n: &Node) -> Result<Vec<NodeProto>>;

    /// The lowest default-domain opset its ONNX form needs (when a model is written
    /// without a source model's opset).
    fn min_opset(&self) -> i64 {
        17
    }
}

/// How an op is read from ONNX: the op types it claims, and the IR form (op and data
/// inputs) of a node when repfuse models that node in exactly its form; None carries
/// the node through unchanged.
pub trait FromOnnx {
    /// ONNX `op_type`s (default domain) this op may be read from.
    const ONNX_OPS: &'static [&'static str];
    /// The op and its data inputs, or None for a form not modelled.
    fn from_onnx(n: &NodeProto, cx: &mut OnnxImport) -> Option<(Op, Vec<String>)>;
}

/// An ONNX reader of one op: the op types it claims and its `from_onnx`.
pub type OnnxReader = (&'static [&'static str], fn(&NodeProto, &mut OnnxImport) -> Option<(Op, Vec<String>)>);

/// The op registry: one line per op, `Variant(Type) in file` or `Variant = Type in
/// file`. The line declares the op's file (`src/ops/<file>.rs`) and exports its type;
/// `Variant(Type)` holds the op's struct; `Variant = Type` is an op without
/// attributes (a unit struct; the variant stays a unit so graph files read `"Add"`).
macro_rules! ops {
    ($( $(#[$doc:meta])* $variant:ident $( ( $ty:ident ) )? $( = $unit:ident )? in $file:ident ,)*) => {
        $( mod $file; pub use $file::{ $($ty)? $($unit)? }; )*

        /// One node's operation.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        pub enum Op {
            $( $(#[$doc])* $variant $( ($ty) )?, )*
        }

        impl Op {
            /// The op's definition: everything repfuse knows about it.
            pub fn def(&self) -> &dyn OpDef {
                match self {
                    $( ops!(@pat x $variant $( ($ty) )? $( = $unit )?) => ops!(@def x $( ($ty) )? $( = $unit )?), )*
                }
            }
        }

        /// Every op's ONNX reader, in registration order.
        pub const ONNX_READERS: &[OnnxReader] = &[
            $( ops!(@reader $( ($ty) )? $( = $unit )?), )*
        ];
    };
    (@pat $x:ident $variant:ident ($ty:ident)) => { Op::$variant($x) };
    (@pat $x:ident $variant:ident = $unit:ident) => { Op::$variant };
    (@def $x:ident ($ty:ident)) => { $x };
    (@def $x:ident = $unit:ident) => { &$unit };
    (@reader ($ty:ident)) => { (<$ty as FromOnnx>::ONNX_OPS, <$ty as FromOnnx>::from_onnx) };
    (@reader = $unit:ident) => { (<$unit as FromOnnx>::ONNX_OPS, <$unit as FromOnnx>::from_onnx) };
}

ops! {
    /// 2D convolution.
    Conv2d(Conv2d) in conv,
    /// Inference-mode batch norm.
    BatchNorm(BatchNorm) in batch_norm,
    /// Fully connected layer.
    Linear(Linear) in linear,
    /// 2D average pooling.
    AvgPool2d(AvgPool2d) in avg_pool,
    /// Mean over H and W, NCHW -> NC11.
    GlobalAvgPool = GlobalAvgPool in global_avg_pool,
    /// Sum of N inputs of the same shape.
    Add = Add in add,
    /// Concatenation on the channel axis (1).
    Concat = Concat in concat,
    /// Pointwise activation.
    Activation(Activation) in activation,
    /// NCHW -> N x (C*H*W).
    Flatten = Flatten in flatten,
    /// PReLU with a constant per-channel (or shared) slope.
    PRelu(PRelu) in prelu,
    /// An op passed through untouched.
    Opaque(Opaque) in opaque,
}

impl Op {
    /// Short kind name for reports and op histograms.
    pub fn kind(&self) -> &str {
        self.def().kind()
    }

    /// Names of the parameter tensors this op reads.
    pub fn params(&self) -> Vec<&str> {
        self.def().params()
    }
}

//! `Activation`: pointwise nonlinearities (ONNX `Relu`, `LeakyRelu`, `Sigmoid`, `Tanh`,
//! `Gelu`, `HardSwish`, `HardSigmoid`; SiLU is written as `x * Sigmoid(x)`). Never
//! fused into weights, only into a conv's GPU dispatch. The GPU side of each is a case
//! of `activate` in `shaders/activation.wgsl`, by the code `act_code` gives it.

use onnx_protobuf::NodeProto;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{check, FromOnnx, Op, OpDef, ParamShapes};
use crate::cpu::ErrorScaleArgs;
use crate::error::Result;
use crate::gpu::{GpuStep, GpuValue};
use crate::graph::Node;
use crate::io::onnx::attrs::{self, make_float, node_proto};
use crate::io::onnx::OnnxImport;
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Pointwise nonlinearity.
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

impl Activation {
    /// The activation at `v`, in f64.
    pub fn apply(self, v: f32) -> f32 {
        let x = v as f64;
        let y = match self {
            Activation::Relu => x.max(0.0),
            Activation::LeakyRelu(alpha) => {
                if x >= 0.0 {
                    x
                } else {
                    x * alpha as f64
                }
            }
            Activation::Sigmoid => sigmoid(x),
            Activation::Tanh => x.tanh(),
            Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::HardSigmoid => ((x + 3.0) / 6.0).clamp(0.0, 1.0),
        };
        y as f32
    }

    /// The activation's slope at `v`: an error in its input moves its output by that
    /// much (to first order). Where ReLU is off, an input error does not reach the
    /// output at all; passing it through anyway would make deep ReLU nets' error
    /// scales grow like 2^(depth/2) and the bound useless.
    pub fn slope(self, v: f32) -> f64 {
        let x = v as f64;
        match self {
            Activation::Relu => (x > 0.0) as u8 as f64,
            Activation::LeakyRelu(alpha) => {
                if x > 0.0 {
                    1.0
                } else {
                    alpha.abs() as f64
                }
            }
            Activation::Sigmoid => sigmoid(x) * (1.0 - sigmoid(x)),
            Activation::Tanh => 1.0 - x.tanh().powi(2),
            Activation::Gelu => {
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                (0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)) + x * pdf).abs()
            }
            Activation::Silu => (sigmoid(x) * (1.0 + x * (1.0 - sigmoid(x)))).abs(),
            Activation::HardSwish => {
                if x <= -3.0 {
                    0.0
                } else if x >= 3.0 {
                    1.0
                } else {
                    ((2.0 * x + 3.0) / 6.0).abs()
                }
            }
            Activation::HardSigmoid => (x.abs() < 3.0) as u8 as f64 / 6.0,
        }
    }

    /// Its code and parameter in `activate` of `shaders/activation.wgsl`.
    pub fn gpu_code(self) -> (u32, f32) {
        match self {
            Activation::Relu => (1, 0.0),
            Activation::LeakyRelu(alpha) => (2, alpha),
            Activation::Sigmoid => (3, 0.0),
            Activation::Tanh => (4, 0.0),
            Activation::Gelu => (5, 0.0),
            Activation::Silu => (6, 0.0),
            Activation::HardSwish => (7, 0.0),
            Activation::HardSigmoid => (8, 0.0),
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl OpDef for Activation {
    fn kind(&self) -> &str {
        "Activation"
    }

    fn check(&self, n: &Node, _params: &ParamShapes) -> Result<()> {
        check::inputs(n, 1)
    }

    fn output_shape(&self, n: &Node, ins: &[&Vec<usize>]) -> Result<Option<Vec<usize>>> {
        Ok(Some(check::first(n, ins)?.clone()))
    }

    fn forward_cpu(&self, _n: &Node, ins: &[&Tensor], _w: &Weights) -> Result<Tensor> {
        let x = ins[0];
        Ok(Tensor::from_parts(x.shape().to_vec(), x.data().par_iter().map(|&v| self.apply(v)).collect()))
    }

    fn error_scale_sq(&self, e: &ErrorScaleArgs) -> Result<Tensor> {
        // f'(x)^2 S(x)^2 + y^2.
        let d = e.s2[0].data().iter().zip(e.x[0].data()).map(|(s, v)| (*s as f64 * self.slope(*v).powi(2)) as f32).collect();
        Ok(e.plus_y2(Tensor::from_parts(e.y.shape().to_vec(), d)))
    }

    fn forward_gpu(&self, _n: &Node, step: &mut GpuStep) -> Result<GpuValue> {
        step.activation(*self)
    }

    fn to_onnx(&self, n: &Node) -> Result<Vec<NodeProto>> {
        let mut p = node_proto(&n.name, "", n.inputs.clone(), n.outputs.clone());
        p.op_type = match self {
            Activation::Relu => "Relu",
            Activation::LeakyRelu(alpha) => {
                p.attribute = vec![make_float("alpha", *alpha)];
                "LeakyRelu"
            }
            Activation::Sigmoid => "Sigmoid",
            Activation::Tanh => "Tanh",
            Activation::Gelu => "Gelu",
            Activation::HardSwish => "HardSwish",
            Activation::HardSigmoid => {
                p.attribute = vec![make_float("alpha", 1.0 / 6.0), make_float("beta", 0.5)];
                "HardSigmoid"
            }
            Activation::Silu => {
                // ONNX has no SiLU: x * sigmoid(x).
                let sig = format!("{}.sigmoid", n.outputs[0]);
                let s = node_proto(&format!("{}.sigmoid", n.name), "Sigmoid", n.inputs.clone(), vec![sig.clone()]);
                let m = node_proto(&n.name, "Mul", vec![n.inputs[0].clone(), sig], n.outputs.clone());
                return Ok(vec![s, m]);
            }
        }
        .into();
        Ok(vec![p])
    }

    fn min_opset(&self) -> i64 {
        // Gelu became an ONNX op in opset 20.
        if *self == Activation::Gelu {
            20
        } else {
            17
        }
    }
}

impl FromOnnx for Activation {
    const ONNX_OPS: &'static [&'static str] = &["Relu", "LeakyRelu", "Sigmoid", "Tanh", "Gelu", "HardSwish", "HardSigmoid"];

    fn from_onnx(n: &NodeProto, cx: &mut OnnxImport) -> Option<(Op, Vec<String>)> {
        let a = match n.op_type.as_str() {
            "Relu" => Activation::Relu,
            "Sigmoid" => Activation::Sigmoid,
            "Tanh" => Activation::Tanh,
            "LeakyRelu" => Activation::LeakyRelu(attrs::float(n, "alpha", 0.01)),
            "HardSwish" => Activation::HardSwish,
            "HardSigmoid" if (attrs::float(n, "alpha", 0.2) - 1.0 / 6.0).abs() < 1e-7 && attrs::float(n, "beta", 0.5) == 0.5 => Activation::HardSigmoid,
            "Gelu" if attrs::string(n, "approximate").is_none_or(|a| a == "none") => Activation::Gelu,
            _ => return None,
        };
        Some((Op::Activation(a), vec![cx.input(n, 0)?]))
    }
}

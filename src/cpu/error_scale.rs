//! The rounding-error scale of every value the reference forward computes: what the
//! tolerance policy (`verify.rs`) bounds each output element by.
//!
//! Model: every f32 rounding (a weight rounded once after fusion, an activation stored
//! between ops) adds an independent error of about one unit roundoff `u` times the
//! rounded value, and errors already in an op's input pass through the op like the
//! signal does. So each value `y` carries `S(y)`, the standard deviation of its
//! accumulated error in units of `u`, and (squared, elementwise):
//!
//! - conv / linear `y = W*x + b`: `S(y)^2 = (W^2) * (S(x)^2 + x^2) + b^2 + y^2`
//!   (input errors through the weights, each weight rounded once, the output stored);
//! - batch norm `y = s*x + t`: `S(y)^2 = s^2 (S(x)^2 + x^2) + t^2 + y^2`;
//! - add: `sum S_i^2 + y^2`; activation: `f'(x)^2 S(x)^2 + y^2` (its slope where it
//!   is evaluated: 0 where ReLU is off); pools: the window mean of `S^2` (a mean of k independent errors has
//!   variance `sum/k^2`, so this is k times conservative) `+ y^2`; concat and flatten
//!   move `S` with the data.
//!
//! The same arithmetic with wrong weights (a dropped BN eps, a lost bias, a kernel one
//! tap off) moves outputs by many `u * S`, which is what the tolerance catches.

use crate::error::Result;
use crate::graph::{Activation, Node, Op};
use crate::tensor::Tensor;
use crate::weights::Weights;

fn sq(t: &Tensor) -> Tensor {
    Tensor::from_parts(t.shape().to_vec(), t.data().iter().map(|v| v * v).collect())
}

fn zip(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32) -> Tensor {
    Tensor::from_parts(a.shape().to_vec(), a.data().iter().zip(b.data()).map(|(x, y)| f(*x, *y)).collect())
}

/// The activation's slope at `v`: an error in its input moves its output by that
/// much (to first order). Where ReLU is off, an input error does not reach the output
/// at all; passing it through anyway would make deep ReLU nets' scales grow like
/// 2^(depth/2) and the bound useless.
fn slope(a: Activation, v: f32) -> f64 {
    let x = v as f64;
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    match a {
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

/// `S(y)^2` of node `n`, from its inputs `x`, their `S^2` and its output `y`.
/// `run` is the reference's own op evaluation (reused on squared tensors).
pub fn error_scale_sq(
    n: &Node,
    x: &[&Tensor],
    s2: &[&Tensor],
    y: &Tensor,
    w: &Weights,
    run: impl Fn(&Node, &[&Tensor], &Weights) -> Result<Tensor>,
) -> Result<Tensor> {
    let y2 = sq(y);
    let plus_y2 = |t: Tensor| zip(&t, &y2, |a, b| a + b);
    let signal = || zip(s2[0], x[0], |s, v| s + v * v);
    Ok(match &n.op {
        Op::Conv2d(_) | Op::Linear(_) => {
            // The same op on squared weight and bias (its parameters) and (S^2 + x^2).
            let mut sw = Weights::new();
            for p in n.op.params() {
                sw.insert(p, sq(w.get(p)?));
            }
            plus_y2(run(n, &[&signal()], &sw)?)
        }
        Op::BatchNorm(b) => {
            let (g, be, m, v) = (w.get(&b.gamma)?.data(), w.get(&b.beta)?.data(), w.get(&b.mean)?.data(), w.get(&b.var)?.data());
            let ch = b.channels.max(1);
            let inner = (x[0].numel() / x[0].shape()[0].max(1) / ch).max(1);
            let sig = signal();
            let out = sig
                .data()
                .iter()
                .zip(y2.data())
                .enumerate()
                .map(|(i, (sx, yy))| {
                    let c = (i / inner) % ch;
                    let s = g[c] as f64 / (v[c] as f64 + b.eps as f64).sqrt();
                    let t = be[c] as f64 - m[c] as f64 * s;
                    (s * s * *sx as f64 + t * t) as f32 + yy
                })
                .collect();
            Tensor::from_parts(y.shape().to_vec(), out)
        }
        Op::Add => plus_y2(s2[1..].iter().fold((*s2[0]).clone(), |acc, t| zip(&acc, t, |a, b| a + b))),
        Op::Activation(a) => {
            let d = s2[0].data().iter().zip(x[0].data()).map(|(s, v)| (*s as f64 * slope(*a, *v).powi(2)) as f32).collect();
            plus_y2(Tensor::from_parts(y.shape().to_vec(), d))
        }
        Op::AvgPool2d(_) | Op::GlobalAvgPool => plus_y2(run(n, s2, w)?),
        Op::Concat | Op::Flatten => run(n, s2, w)?,
        Op::Opaque(_) => run(n, x, w)?,
    })
}

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
//! - add: `sum S_i^2 + y^2`; activation: `L^2 S(x)^2 + y^2` with `L` the activation's
//!   largest slope; pools: the window mean of `S^2` (a mean of k independent errors has
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

/// Largest slope of an activation (its Lipschitz constant).
fn slope(a: Activation) -> f32 {
    match a {
        Activation::Relu | Activation::Tanh => 1.0,
        Activation::LeakyRelu(alpha) => alpha.abs().max(1.0),
        Activation::Sigmoid => 0.25,
        Activation::Gelu => 1.13,
        Activation::Silu => 1.1,
        Activation::HardSwish => 1.5,
        Activation::HardSigmoid => 1.0 / 6.0,
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
        Op::Conv2d(c) => {
            let mut sw = Weights::new();
            sw.insert(c.weight.clone(), sq(w.get(&c.weight)?));
            if let Some(b) = &c.bias {
                sw.insert(b.clone(), sq(w.get(b)?));
            }
            plus_y2(run(n, &[&signal()], &sw)?)
        }
        Op::Linear(l) => {
            let mut sw = Weights::new();
            sw.insert(l.weight.clone(), sq(w.get(&l.weight)?));
            if let Some(b) = &l.bias {
                sw.insert(b.clone(), sq(w.get(b)?));
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
            let l2 = slope(*a) * slope(*a);
            plus_y2(Tensor::from_parts(y.shape().to_vec(), s2[0].data().iter().map(|s| s * l2).collect()))
        }
        Op::AvgPool2d(_) | Op::GlobalAvgPool => plus_y2(run(n, s2, w)?),
        Op::Concat | Op::Flatten => run(n, s2, w)?,
        Op::Opaque(_) => run(n, x, w)?,
    })
}

//! The rounding-error scale of every value the reference forward computes: what the
//! tolerance policy (`verify.rs`) bounds each output element by. Each op gives its own
//! rule (`OpDef::error_scale_sq`, in its file under `src/ops/`); this file holds the
//! model and the pieces the rules share.
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
use crate::graph::Node;
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Elementwise square.
pub fn sq(t: &Tensor) -> Tensor {
    Tensor::from_parts(t.shape().to_vec(), t.data().iter().map(|v| v * v).collect())
}

/// `f(a, b)` elementwise, in `a`'s shape.
pub fn zip(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32) -> Tensor {
    Tensor::from_parts(a.shape().to_vec(), a.data().iter().zip(b.data()).map(|(x, y)| f(*x, *y)).collect())
}

/// What an op's error-scale rule sees: the node, its inputs `x`, their `S^2`, its
/// output `y` and the weights.
pub struct ErrorScaleArgs<'a> {
    /// The node.
    pub n: &'a Node,
    /// Its input values.
    pub x: &'a [&'a Tensor],
    /// `S^2` of each input.
    pub s2: &'a [&'a Tensor],
    /// Its output value.
    pub y: &'a Tensor,
    /// The weights it reads.
    pub w: &'a Weights,
}

impl ErrorScaleArgs<'_> {
    /// `y^2`: the error of storing the output in f32.
    pub fn y2(&self) -> Tensor {
        sq(self.y)
    }

    /// `t + y^2`.
    pub fn plus_y2(&self, t: Tensor) -> Tensor {
        zip(&t, &self.y2(), |a, b| a + b)
    }

    /// `S(x)^2 + x^2` of the first input: its error and its own rounding, which a
    /// linear op carries through its weights.
    pub fn signal(&self) -> Tensor {
        zip(self.s2[0], self.x[0], |s, v| s + v * v)
    }

    /// The node's own forward on other inputs and weights (a linear op applied to
    /// squared quantities).
    pub fn run(&self, ins: &[&Tensor], w: &Weights) -> Result<Tensor> {
        self.n.op.def().forward_cpu(self.n, ins, w)
    }

    /// For `y = W*x + b`: the same op on squared weight and bias (all its
    /// parameters) and on `signal()`, plus `y^2`.
    pub fn through_squared_params(&self) -> Result<Tensor> {
        let mut sw = Weights::new();
        for p in self.n.op.params() {
            sw.insert(p, sq(self.w.get(p)?));
        }
        Ok(self.plus_y2(self.run(&[&self.signal()], &sw)?))
    }
}

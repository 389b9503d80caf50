//! Forward pass of a graph of known ops: the ground truth every fusion is checked
//! against. Tensors are f32 between ops (as a deployed model stores them) and every
//! reduction sums in f64.

use std::collections::HashMap;

use rayon::prelude::*;

use super::conv::conv2d;
use crate::error::{Error, Result};
use crate::graph::{Activation, AvgPool2d, Graph, Node, Op};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Runs `g` on `inputs` (by graph input name); returns every graph output by name.
pub fn forward(g: &Graph, weights: &Weights, inputs: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    Ok(run_graph(g, weights, inputs, false)?.into_iter().map(|(k, (v, _))| (k, v)).collect())
}

/// `forward`, and with every output its rounding-error scale `S` (see
/// `error_scale.rs`): the tolerance policy bounds each element's error by `k * u * S`.
pub fn forward_with_error_scale(g: &Graph, weights: &Weights, inputs: &HashMap<String, Tensor>) -> Result<HashMap<String, (Tensor, Tensor)>> {
    run_graph(g, weights, inputs, true)?
        .into_iter()
        .map(|(k, (v, s2))| {
            let s = s2.expect("tracked");
            let s = Tensor::from_parts(s.shape().to_vec(), s.data().iter().map(|x| x.sqrt()).collect());
            Ok((k, (v, s)))
        })
        .collect()
}

type Live = (Tensor, Option<Tensor>);

fn run_graph(g: &Graph, weights: &Weights, inputs: &HashMap<String, Tensor>, track: bool) -> Result<HashMap<String, Live>> {
    let mut live: HashMap<String, Live> = HashMap::new();
    for v in &g.inputs {
        let t = inputs.get(&v.name).ok_or_else(|| Error::tensor(&v.name, "graph input not supplied"))?;
        if t.shape() != v.shape.as_slice() {
            return Err(Error::tensor(&v.name, format!("input has shape {:?}, graph declares {:?}", t.shape(), v.shape)));
        }
        // Inputs are exact: both graphs see the same values.
        live.insert(v.name.clone(), (t.clone(), track.then(|| Tensor::zeros(t.shape().to_vec()))));
    }
    // Refuse before allocating when a tensor would be absurdly large (a hostile file
    // can declare a 65536x65536 input).
    for (t, shape) in crate::graph::infer_shapes(g)? {
        if crate::tensor::checked_numel(&shape).is_none_or(|n| n > crate::plan::MAX_TENSOR_ELEMENTS) {
            return Err(Error::tensor(&t, format!("shape {:?} exceeds the per-tensor limit of the reference forward", shape)));
        }
    }
    // Drop each intermediate after its last reader so deep nets fit in memory.
    let mut last_use: HashMap<&str, usize> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for t in &n.inputs {
            last_use.insert(t, i);
        }
    }
    for (i, n) in g.nodes.iter().enumerate() {
        let ins: Vec<&Live> = n
            .inputs
            .iter()
            .map(|t| live.get(t).ok_or_else(|| Error::Graph(format!("node `{}` reads `{}` before it exists", n.name, t))))
            .collect::<Result<_>>()?;
        let xs: Vec<&Tensor> = ins.iter().map(|l| &l.0).collect();
        let out = run_node(n, &xs, weights)?;
        let scale = if track {
            let s2: Vec<&Tensor> = ins.iter().map(|l| l.1.as_ref().expect("tracked")).collect();
            Some(super::error_scale::error_scale_sq(n, &xs, &s2, &out, weights, run_node)?)
        } else {
            None
        };
        for t in &n.inputs {
            if last_use.get(t.as_str()) == Some(&i) && !g.outputs.contains(t) {
                live.remove(t);
            }
        }
        live.insert(n.outputs[0].clone(), (out, scale));
    }
    g.outputs.iter().map(|o| live.get(o).cloned().map(|t| (o.clone(), t)).ok_or_else(|| Error::Graph(format!("output `{}` was not computed", o)))).collect()
}

fn run_node(n: &Node, ins: &[&Tensor], w: &Weights) -> Result<Tensor> {
    let x = ins[0];
    match &n.op {
        Op::Conv2d(c) => {
            let b = c.bias.as_deref().map(|b| w.get(b)).transpose()?;
            conv2d(&n.name, x, w.get(&c.weight)?, b, c)
        }
        Op::BatchNorm(b) => {
            let (g, be, m, v) = (w.get(&b.gamma)?.data(), w.get(&b.beta)?.data(), w.get(&b.mean)?.data(), w.get(&b.var)?.data());
            let (nb, ch) = (x.shape()[0], x.shape()[1]);
            let inner = x.numel() / (nb * ch).max(1);
            let mut out = x.data().to_vec();
            out.par_chunks_mut(inner.max(1)).enumerate().for_each(|(i, plane)| {
                let c = i % ch;
                let s = g[c] as f64 / (v[c] as f64 + b.eps as f64).sqrt();
                let shift = be[c] as f64 - m[c] as f64 * s;
                for p in plane {
                    *p = (*p as f64 * s + shift) as f32;
                }
            });
            Ok(Tensor::from_parts(x.shape().to_vec(), out))
        }
        Op::Linear(l) => {
            let wt = w.get(&l.weight)?.data();
            let bias = l.bias.as_deref().map(|b| w.get(b)).transpose()?;
            let nb = x.shape()[0];
            let (fi, fo) = (l.in_features, l.out_features);
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
        Op::AvgPool2d(p) => avg_pool(&n.name, x, p),
        Op::GlobalAvgPool => {
            let [nb, ch, h, wd] = dims4(&n.name, x)?;
            let out = x.data().chunks(h * wd).map(|p| (p.iter().map(|&v| v as f64).sum::<f64>() / (h * wd) as f64) as f32).collect();
            Ok(Tensor::from_parts(vec![nb, ch, 1, 1], out))
        }
        Op::Add => {
            let mut acc: Vec<f64> = x.data().iter().map(|&v| v as f64).collect();
            for t in &ins[1..] {
                if t.shape() != x.shape() {
                    return Err(Error::shape(&n.name, "inputs", format!("{:?} vs {:?}", x.shape(), t.shape())));
                }
                for (a, v) in acc.iter_mut().zip(t.data()) {
                    *a += *v as f64;
                }
            }
            Ok(Tensor::from_parts(x.shape().to_vec(), acc.into_iter().map(|v| v as f32).collect()))
        }
        Op::Concat => {
            let nb = x.shape()[0];
            let mut shape = x.shape().to_vec();
            shape[1] = ins.iter().map(|t| t.shape()[1]).sum();
            let mut out = Vec::with_capacity(shape.iter().product());
            for b in 0..nb {
                for t in ins {
                    let per = t.numel() / nb;
                    out.extend_from_slice(&t.data()[b * per..][..per]);
                }
            }
            Ok(Tensor::from_parts(shape, out))
        }
        Op::Activation(a) => Ok(Tensor::from_parts(x.shape().to_vec(), x.data().par_iter().map(|&v| activate(*a, v)).collect())),
        Op::Flatten => {
            let nb = x.shape()[0];
            Ok(x.reshaped(vec![nb, x.numel() / nb]).expect("same count"))
        }
        Op::Opaque(o) => Err(Error::unsupported(&n.name, format!("the CPU reference cannot run op `{}`", o.op_type))),
    }
}

fn dims4(node: &str, x: &Tensor) -> Result<[usize; 4]> {
    match *x.shape() {
        [a, b, c, d] => Ok([a, b, c, d]),
        ref s => Err(Error::shape(node, "input", format!("expected NCHW, got {:?}", s))),
    }
}

/// Applies one activation in f64.
pub fn activate(a: Activation, v: f32) -> f32 {
    let x = v as f64;
    let y = match a {
        Activation::Relu => x.max(0.0),
        Activation::LeakyRelu(alpha) => {
            if x >= 0.0 {
                x
            } else {
                x * alpha as f64
            }
        }
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Tanh => x.tanh(),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        Activation::HardSigmoid => ((x + 3.0) / 6.0).clamp(0.0, 1.0),
    };
    y as f32
}

fn avg_pool(node: &str, x: &Tensor, p: &AvgPool2d) -> Result<Tensor> {
    let [nb, ch, h, w] = dims4(node, x)?;
    let out_len = |a: usize, len: usize| crate::graph::window_out(len, p.kernel[a], p.stride[a], p.pads[a] + p.pads[a + 2], 1, p.ceil_mode);
    let (Some(ho), Some(wo)) = (out_len(0, h), out_len(1, w)) else {
        return Err(Error::shape(node, "kernel", "pool window does not fit the input"));
    };
    let mut out = vec![0f32; nb * ch * ho * wo];
    out.par_chunks_mut(ho * wo).enumerate().for_each(|(plane, dst)| {
        let xin = &x.data()[plane * h * w..][..h * w];
        for y in 0..ho {
            for xo in 0..wo {
                // Window in padded coordinates, clipped to the padded extent like PyTorch.
                let y0 = (y * p.stride[0]) as isize - p.pads[0] as isize;
                let x0 = (xo * p.stride[1]) as isize - p.pads[1] as isize;
                let y1 = (y0 + p.kernel[0] as isize).min((h + p.pads[2]) as isize);
                let x1 = (x0 + p.kernel[1] as isize).min((w + p.pads[3]) as isize);
                let padded_count = ((y1 - y0) * (x1 - x0)) as f64;
                let (ys, ye) = (y0.max(0), y1.min(h as isize));
                let (xs, xe) = (x0.max(0), x1.min(w as isize));
                let mut s = 0f64;
                for iy in ys..ye {
                    for ix in xs..xe {
                        s += xin[iy as usize * w + ix as usize] as f64;
                    }
                }
                let valid = ((ye - ys).max(0) * (xe - xs).max(0)) as f64;
                let div = if p.count_include_pad { padded_count } else { valid };
                dst[y * wo + xo] = if div > 0.0 { (s / div) as f32 } else { 0.0 };
            }
        }
    });
    Ok(Tensor::from_parts(vec![nb, ch, ho, wo], out))
}

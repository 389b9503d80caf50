//! Direct 2D convolution for the reference forward pass: f32 in and out, f64 sums.
//! Parallel over (batch, output channel) planes; the inner loop runs along contiguous
//! output columns so the compiler can vectorise it.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::graph::Conv2d;
use crate::tensor::Tensor;

/// Range of output columns `x` whose input column `x*stride + tap - pad` is inside
/// `[0, len)`.
fn valid_range(out_len: usize, len: usize, stride: usize, tap: usize, pad: usize) -> (usize, usize) {
    // x*stride + tap >= pad  and  x*stride + tap < pad + len
    let lo = pad.saturating_sub(tap).div_ceil(stride);
    let hi_excl = if pad + len > tap { (pad + len - tap).div_ceil(stride) } else { 0 };
    (lo.min(out_len), hi_excl.min(out_len))
}

/// Reference conv of NCHW `x` with `weight` `[O, I/groups, kh, kw]` as `c` describes; `node` names errors.
pub fn conv2d(node: &str, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, c: &Conv2d) -> Result<Tensor> {
    let [n, ci, h, w] = match *x.shape() {
        [n, ci, h, w] => [n, ci, h, w],
        ref s => return Err(Error::shape(node, "input", format!("conv needs NCHW, got {:?}", s))),
    };
    if ci != c.in_channels || weight.shape() != c.weight_shape().as_slice() {
        return Err(Error::shape(
            node,
            "weight",
            format!("input {:?} / weight {:?} do not match the conv ({} -> {}, groups {})", x.shape(), weight.shape(), c.in_channels, c.out_channels, c.groups),
        ));
    }
    let out_hw = |a: usize, len: usize| crate::graph::infer_out(len, c.kernel[a], c.stride[a], c.pads[a] + c.pads[a + 2], c.dilation[a]);
    let (Some(ho), Some(wo)) = (out_hw(0, h), out_hw(1, w)) else {
        return Err(Error::shape(node, "kernel", "kernel does not fit the padded input"));
    };
    let (o, g) = (c.out_channels, c.groups);
    let (per_in, per_out) = (ci / g, o / g);
    let [kh, kw] = c.kernel;
    let xd = x.data();
    let wd = weight.data();
    let mut out = vec![0f32; n * o * ho * wo];
    out.par_chunks_mut(ho * wo).enumerate().for_each(|(plane, dst)| {
        let (b, oc) = (plane / o, plane % o);
        let mut acc = vec![bias.map_or(0.0, |t| t.data()[oc] as f64); ho * wo];
        let cbase = (oc / per_out) * per_in;
        for j in 0..per_in {
            let xin = &xd[(b * ci + cbase + j) * h * w..][..h * w];
            for a in 0..kh {
                let (y_lo, y_hi) = valid_range(ho, h, c.stride[0], a * c.dilation[0], c.pads[0]);
                for bb in 0..kw {
                    let wv = wd[((oc * per_in + j) * kh + a) * kw + bb] as f64;
                    if wv == 0.0 {
                        continue;
                    }
                    let (x_lo, x_hi) = valid_range(wo, w, c.stride[1], bb * c.dilation[1], c.pads[1]);
                    for y in y_lo..y_hi {
                        let iy = y * c.stride[0] + a * c.dilation[0] - c.pads[0];
                        let row = &xin[iy * w..][..w];
                        let accrow = &mut acc[y * wo..][..wo];
                        if c.stride[1] == 1 {
                            let off = bb * c.dilation[1];
                            for x in x_lo..x_hi {
                                accrow[x] += wv * row[x + off - c.pads[1]] as f64;
                            }
                        } else {
                            for x in x_lo..x_hi {
                                accrow[x] += wv * row[x * c.stride[1] + bb * c.dilation[1] - c.pads[1]] as f64;
                            }
                        }
                    }
                }
            }
        }
        for (d, a) in dst.iter_mut().zip(acc) {
            *d = a as f32;
        }
    });
    Ok(Tensor::from_parts(vec![n, o, ho, wo], out))
}

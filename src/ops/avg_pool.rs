//! `AvgPool2d`: 2D average pooling over NCHW (ONNX `AveragePool`).

use onnx_protobuf::NodeProto;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{check, FromOnnx, Op, OpDef, ParamShapes};
use crate::cpu::ErrorScaleArgs;
use crate::error::{Error, Result};
use crate::gpu::{GpuStep, GpuValue, KernelId, PoolParams};
use crate::graph::{window_out, Node};
use crate::io::onnx::attrs::{self, make_int, make_ints, node_proto};
use crate::io::onnx::OnnxImport;
use crate::tensor::Tensor;
use crate::weights::Weights;

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

impl AvgPool2d {
    /// The pool over a whole `h x w` plane (global average pooling).
    pub fn global(h: usize, w: usize) -> AvgPool2d {
        AvgPool2d { kernel: [h, w], stride: [1, 1], pads: [0; 4], count_include_pad: true, ceil_mode: false }
    }

    /// Records this pool on the GPU (`pool.wgsl`); also runs global pooling.
    pub(crate) fn record(&self, n: &Node, step: &mut GpuStep) -> Result<GpuValue> {
        let xs = step.shape(&n.inputs[0])?;
        let out = step.out_shape().to_vec();
        let u = GpuStep::u32;
        let p = PoolParams {
            planes: u(xs[0] * xs[1]),
            h: u(xs[2]),
            w: u(xs[3]),
            ho: u(out[2]),
            wo: u(out[3]),
            kh: u(self.kernel[0]),
            kw: u(self.kernel[1]),
            sh: u(self.stride[0]),
            sw: u(self.stride[1]),
            pt: u(self.pads[0]),
            pl: u(self.pads[1]),
            pb: u(self.pads[2]),
            pr: u(self.pads[3]),
            count_include_pad: self.count_include_pad as u32,
            _pad0: 0,
            _pad1: 0,
        };
        let x = step.input(0)?;
        let y = step.output()?;
        step.dispatch(KernelId::Pool, &p, &[&*x, &y])?;
        Ok(GpuValue::New(y))
    }
}

impl OpDef for AvgPool2d {
    fn kind(&self) -> &str {
        "AvgPool"
    }

    fn check(&self, n: &Node, _params: &ParamShapes) -> Result<()> {
        check::inputs(n, 1)?;
        check::positive(n, "kernel", &self.kernel)?;
        check::positive(n, "stride", &self.stride)
    }

    fn output_shape(&self, n: &Node, ins: &[&Vec<usize>]) -> Result<Option<Vec<usize>>> {
        let x = check::first(n, ins)?;
        check::rank(n, x, &[4])?;
        let mut hw = [0; 2];
        for a in 0..2 {
            hw[a] = window_out(x[2 + a], self.kernel[a], self.stride[a], self.pads[a] + self.pads[a + 2], 1, self.ceil_mode)
                .ok_or_else(|| Error::shape(&n.name, "kernel", format!("pool kernel {:?} does not fit input {:?}", self.kernel, x)))?;
        }
        Ok(Some(vec![x[0], x[1], hw[0], hw[1]]))
    }

    fn flops(&self, _n: &Node, per_sample: u64) -> u64 {
        per_sample.saturating_mul(self.kernel[0] as u64).saturating_mul(self.kernel[1] as u64)
    }

    fn forward_cpu(&self, n: &Node, ins: &[&Tensor], _w: &Weights) -> Result<Tensor> {
        let (node, x, p) = (n.name.as_str(), ins[0], self);
        let [nb, ch, h, w] = check::dims4(node, x.shape())?;
        let out_len = |a: usize, len: usize| window_out(len, p.kernel[a], p.stride[a], p.pads[a] + p.pads[a + 2], 1, p.ceil_mode);
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

    fn error_scale_sq(&self, e: &ErrorScaleArgs) -> Result<Tensor> {
        // The window mean of S^2 (k times conservative) plus the stored output.
        Ok(e.plus_y2(e.run(e.s2, e.w)?))
    }

    fn forward_gpu(&self, n: &Node, step: &mut GpuStep) -> Result<GpuValue> {
        self.record(n, step)
    }

    fn to_onnx(&self, n: &Node) -> Result<Vec<NodeProto>> {
        let mut p = node_proto(&n.name, "AveragePool", n.inputs.clone(), n.outputs.clone());
        p.attribute = vec![
            make_ints("kernel_shape", &self.kernel),
            make_ints("strides", &self.stride),
            make_ints("pads", &self.pads),
            make_int("count_include_pad", self.count_include_pad as i64),
            make_int("ceil_mode", self.ceil_mode as i64),
        ];
        Ok(vec![p])
    }
}

impl FromOnnx for AvgPool2d {
    const ONNX_OPS: &'static [&'static str] = &["AveragePool"];

    fn from_onnx(n: &NodeProto, cx: &mut OnnxImport) -> Option<(Op, Vec<String>)> {
        let kernel = attrs::pair(attrs::ints(n, "kernel_shape"), [0, 0])?;
        if kernel.contains(&0)
            || !matches!(attrs::string(n, "auto_pad").as_deref(), None | Some("NOTSET"))
            || attrs::ints(n, "dilations").is_some_and(|d| d.iter().any(|&x| x != 1))
        {
            return None;
        }
        let p = AvgPool2d {
            kernel,
            stride: attrs::pair(attrs::ints(n, "strides"), [1, 1])?,
            pads: attrs::quad(attrs::ints(n, "pads"))?,
            count_include_pad: attrs::int(n, "count_include_pad", 0) != 0,
            ceil_mode: attrs::int(n, "ceil_mode", 0) != 0,
        };
        Some((Op::AvgPool2d(p), vec![cx.input(n, 0)?]))
    }
}

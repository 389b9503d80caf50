//! `Conv2d`: 2D convolution (ONNX `Conv`).

use onnx_protobuf::NodeProto;
use serde::{Deserialize, Serialize};

use super::{check, FromOnnx, Op, OpDef, ParamShapes};
use crate::cpu::ErrorScaleArgs;
use crate::error::{Error, Result};
use crate::fuse::geometry::Window;
use crate::gpu::{ConvParams, GpuStep, GpuValue, KernelId};
use crate::graph::{window_out, Node};
use crate::io::onnx::attrs::{self, make_int, make_ints, node_proto};
use crate::io::onnx::OnnxImport;
use crate::tensor::Tensor;
use crate::weights::Weights;

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
    /// Its sliding window (kernel, stride, pads, dilation).
    pub fn window(&self) -> Window {
        Window { kernel: self.kernel, stride: self.stride, pads: self.pads, dilation: self.dilation }
    }
    /// A conv of window `w`; channels, groups and tensors still to be set (one
    /// group, no channels, no weight).
    pub fn from_window(w: Window) -> Conv2d {
        Conv2d {
            weight: String::new(),
            bias: None,
            in_channels: 0,
            out_channels: 0,
            kernel: w.kernel,
            stride: w.stride,
            pads: w.pads,
            dilation: w.dilation,
            groups: 1,
        }
    }
}

impl OpDef for Conv2d {
    fn kind(&self) -> &str {
        "Conv"
    }

    fn params(&self) -> Vec<&str> {
        std::iter::once(self.weight.as_str()).chain(self.bias.as_deref()).collect()
    }

    fn check(&self, n: &Node, params: &ParamShapes) -> Result<()> {
        check::inputs(n, 1)?;
        check::positive(n, "kernel", &self.kernel)?;
        check::positive(n, "stride", &self.stride)?;
        check::positive(n, "dilation", &self.dilation)?;
        check::positive(n, "channels", &[self.in_channels, self.out_channels, self.groups])?;
        if !self.in_channels.is_multiple_of(self.groups) || !self.out_channels.is_multiple_of(self.groups) {
            return Err(Error::shape(
                &n.name,
                "groups",
                format!("groups {} must divide in {} and out {} channels", self.groups, self.in_channels, self.out_channels),
            ));
        }
        check::param(n, params, "weight", &self.weight, &self.weight_shape())?;
        if let Some(b) = &self.bias {
            check::param(n, params, "bias", b, &[self.out_channels])?;
        }
        Ok(())
    }

    fn output_shape(&self, n: &Node, ins: &[&Vec<usize>]) -> Result<Option<Vec<usize>>> {
        let x = check::first(n, ins)?;
        check::rank(n, x, &[4])?;
        check::channels(n, x, self.in_channels)?;
        let mut hw = [0; 2];
        for a in 0..2 {
            hw[a] = window_out(x[2 + a], self.kernel[a], self.stride[a], self.pads[a] + self.pads[a + 2], self.dilation[a], false).ok_or_else(|| {
                Error::shape(
                    &n.name,
                    "kernel",
                    format!("dilated kernel {:?} (dilation {:?}) does not fit the padded input {:?}", self.kernel, self.dilation, x),
                )
            })?;
        }
        Ok(Some(vec![x[0], self.out_channels, hw[0], hw[1]]))
    }

    fn flops(&self, _n: &Node, per_sample: u64) -> u64 {
        [2, per_sample, (self.in_channels / self.groups.max(1)) as u64, self.kernel[0] as u64, self.kernel[1] as u64]
            .iter()
            .fold(1u64, |a, &b| a.saturating_mul(b))
    }

    fn reduction_len(&self) -> Option<usize> {
        Some(self.in_channels / self.groups.max(1) * self.kernel[0] * self.kernel[1])
    }

    fn forward_cpu(&self, n: &Node, ins: &[&Tensor], w: &Weights) -> Result<Tensor> {
        let b = self.bias.as_deref().map(|b| w.get(b)).transpose()?;
        crate::cpu::conv2d(&n.name, ins[0], w.get(&self.weight)?, b, self)
    }

    fn error_scale_sq(&self, e: &ErrorScaleArgs) -> Result<Tensor> {
        e.through_squared_params()
    }

    fn forward_gpu(&self, n: &Node, step: &mut GpuStep) -> Result<GpuValue> {
        let xs = step.shape(&n.inputs[0])?;
        let out = step.out_shape().to_vec();
        let (act, alpha) = crate::gpu::act_code(step.take_following_activation());
        let u = GpuStep::u32;
        let p = ConvParams {
            n: u(xs[0]),
            c: u(xs[1]),
            h: u(xs[2]),
            w: u(xs[3]),
            o: u(self.out_channels),
            ho: u(out[2]),
            wo: u(out[3]),
            groups: u(self.groups),
            kh: u(self.kernel[0]),
            kw: u(self.kernel[1]),
            sh: u(self.stride[0]),
            sw: u(self.stride[1]),
            pt: u(self.pads[0]),
            pl: u(self.pads[1]),
            dh: u(self.dilation[0]),
            dw: u(self.dilation[1]),
            has_bias: self.bias.is_some() as u32,
            act,
            alpha,
            _pad: 0,
        };
        let x = step.input(0)?;
        let w = step.param(&self.weight)?;
        let b = self.bias.as_deref().map(|b| step.param(b)).transpose()?;
        let y = step.output()?;
        let dummy = step.dummy();
        let bufs = [&*x, &*w, b.as_deref().unwrap_or(&*dummy), &y];
        // The tiled implicit GEMM needs enough output channels per group and reduction
        // length to fill its 64-wide tiles; on a CPU adapter, where barriers are costly
        // and memory is cached, the register-blocked kernel (8 output channels per
        // workgroup row) takes its place, for any conv with 4+ outputs per group.
        // Depthwise and tiny convs run one output per invocation.
        let (per_out, k_len) = (self.out_channels / self.groups, (self.in_channels / self.groups) * self.kernel[0] * self.kernel[1]);
        let pixels = xs[0] * out[2] * out[3];
        let oc_blocks = per_out.div_ceil(8) * self.groups;
        if step.conv_kernel() == crate::gpu::ConvKernel::Blocked && per_out >= 4 && oc_blocks <= 65535 {
            let blocks = out[3].div_ceil(4) * xs[0] * out[2];
            let gx = blocks.div_ceil(256).min(65535) as u32;
            step.dispatch_grid(KernelId::Conv2dBlocked, &p, &bufs, [gx, oc_blocks as u32, 1])?;
        } else if per_out >= 16 && k_len >= 8 && pixels.div_ceil(64) <= 65535 && self.groups <= 65535 {
            step.dispatch_grid(KernelId::Conv2dTiled, &p, &bufs, [pixels.div_ceil(64) as u32, per_out.div_ceil(64) as u32, self.groups as u32])?;
        } else {
            step.dispatch(KernelId::Conv2d, &p, &bufs)?;
        }
        Ok(GpuValue::New(y))
    }

    fn to_onnx(&self, n: &Node) -> Result<Vec<NodeProto>> {
        let mut p = node_proto(&n.name, "Conv", n.inputs.clone(), n.outputs.clone());
        p.input.push(self.weight.clone());
        p.input.extend(self.bias.clone());
        p.attribute = vec![
            make_ints("kernel_shape", &self.kernel),
            make_ints("strides", &self.stride),
            make_ints("pads", &self.pads),
            make_ints("dilations", &self.dilation),
            make_int("group", self.groups as i64),
        ];
        Ok(vec![p])
    }
}

impl FromOnnx for Conv2d {
    const ONNX_OPS: &'static [&'static str] = &["Conv"];

    fn from_onnx(n: &NodeProto, cx: &mut OnnxImport) -> Option<(Op, Vec<String>)> {
        let (x, w) = (cx.input(n, 0)?, cx.input(n, 1)?);
        let ws = cx.float_param_shape(&w)?.clone();
        let b = cx.input(n, 2);
        if ws.len() != 4 || b.as_ref().is_some_and(|b| cx.float_param_shape(b).is_none()) || !matches!(attrs::string(n, "auto_pad").as_deref(), None | Some("NOTSET")) {
            return None;
        }
        let groups = usize::try_from(attrs::int(n, "group", 1)).ok().filter(|&g| g > 0)?;
        let conv = Conv2d {
            weight: w,
            bias: b,
            in_channels: ws[1].checked_mul(groups)?,
            out_channels: ws[0],
            kernel: [ws[2], ws[3]],
            stride: attrs::pair(attrs::ints(n, "strides"), [1, 1])?,
            pads: attrs::quad(attrs::ints(n, "pads"))?,
            dilation: attrs::pair(attrs::ints(n, "dilations"), [1, 1])?,
            groups,
        };
        Some((Op::Conv2d(conv), vec![x]))
    }
}

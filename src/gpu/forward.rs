//! Forward pass of a graph on the GPU for verification: every node's dispatch is
//! recorded into one command encoder and the outputs come back in one readback, so a
//! whole network is one submission. A conv followed only by an activation runs as one
//! dispatch with the activation fused.

use std::collections::HashMap;
use std::rc::Rc;

use super::context::{grid, GpuContext, Kernel};
use super::shaders::KernelId;
use crate::error::{Error, Result};
use crate::graph::{infer_shapes, Activation, Graph, Op};
use crate::tensor::Tensor;
use crate::weights::Weights;

/// Uniform of `conv2d.wgsl`/`conv2d_tiled.wgsl`; layout must match the WGSL struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ConvParams {
    /// Batch size.
    pub n: u32,
    /// Input channels.
    pub c: u32,
    /// Input height.
    pub h: u32,
    /// Input width.
    pub w: u32,
    /// Output channels.
    pub o: u32,
    /// Output height.
    pub ho: u32,
    /// Output width.
    pub wo: u32,
    /// Group count.
    pub groups: u32,
    /// Kernel height.
    pub kh: u32,
    /// Kernel width.
    pub kw: u32,
    /// Vertical stride.
    pub sh: u32,
    /// Horizontal stride.
    pub sw: u32,
    /// Top padding.
    pub pt: u32,
    /// Left padding.
    pub pl: u32,
    /// Vertical dilation.
    pub dh: u32,
    /// Horizontal dilation.
    pub dw: u32,
    /// 1 when the bias binding holds a real bias.
    pub has_bias: u32,
    /// Fused activation code (see `act_code`); 0 for none.
    pub act: u32,
    /// Activation parameter (LeakyRelu slope).
    pub alpha: f32,
    /// Padding to a 16-byte multiple.
    pub _pad: u32,
}

/// Uniform of `elementwise.wgsl`; layout must match the WGSL struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ElementwiseParams {
    /// 0: batch norm, 1: activation, 2: add.
    pub op: u32,
    /// Elements to process.
    pub numel: u32,
    /// Channel count (batch norm only).
    pub channels: u32,
    /// Elements per channel plane, H*W (batch norm only).
    pub inner: u32,
    /// Activation code (see `act_code`).
    pub act: u32,
    /// Activation parameter (LeakyRelu slope).
    pub alpha: f32,
    /// Batch-norm epsilon.
    pub eps: f32,
    /// Padding to a 16-byte multiple.
    pub _pad: u32,
}

/// Uniform of `pool.wgsl`; layout must match the WGSL struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PoolParams {
    /// Planes to pool, N*C.
    pub planes: u32,
    /// Input height.
    pub h: u32,
    /// Input width.
    pub w: u32,
    /// Output height.
    pub ho: u32,
    /// Output width.
    pub wo: u32,
    /// Window height.
    pub kh: u32,
    /// Window width.
    pub kw: u32,
    /// Vertical stride.
    pub sh: u32,
    /// Horizontal stride.
    pub sw: u32,
    /// Top padding.
    pub pt: u32,
    /// Left padding.
    pub pl: u32,
    /// Bottom padding.
    pub pb: u32,
    /// Right padding.
    pub pr: u32,
    /// 1 to divide by the full window, padding included.
    pub count_include_pad: u32,
    /// Padding to a 16-byte multiple.
    pub _pad0: u32,
    /// Padding to a 16-byte multiple.
    pub _pad1: u32,
}

/// Uniform of `linear.wgsl`; layout must match the WGSL struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LinearParams {
    /// Batch size.
    pub n: u32,
    /// Input features.
    pub fin: u32,
    /// Output features.
    pub fout: u32,
    /// 1 when the bias binding holds a real bias.
    pub has_bias: u32,
}

/// Activation code shared with `activation.wgsl`.
pub fn act_code(a: Option<Activation>) -> (u32, f32) {
    match a {
        None => (0, 0.0),
        Some(Activation::Relu) => (1, 0.0),
        Some(Activation::LeakyRelu(alpha)) => (2, alpha),
        Some(Activation::Sigmoid) => (3, 0.0),
        Some(Activation::Tanh) => (4, 0.0),
        Some(Activation::Gelu) => (5, 0.0),
        Some(Activation::Silu) => (6, 0.0),
        Some(Activation::HardSwish) => (7, 0.0),
        Some(Activation::HardSigmoid) => (8, 0.0),
    }
}

/// A size that `forward_gpu` proved fits in u32 before recording anything (every
/// tensor of the graph has at most u32::MAX elements, so every dimension and offset
/// derived from one does too).
fn u(x: usize) -> u32 {
    debug_assert!(x <= u32::MAX as usize, "forward_gpu's size check missed {}", x);
    x as u32
}

struct Recorder<'a> {
    ctx: &'a GpuContext,
    encoder: wgpu::CommandEncoder,
    keep: Vec<wgpu::Buffer>,
}

impl Recorder<'_> {
    fn dispatch<P: bytemuck::Pod>(&mut self, kernel: &Kernel, params: &P, buffers: &[&wgpu::Buffer], elems: usize) {
        let (x, y) = grid(elems);
        self.dispatch_grid(kernel, params, buffers, [x, y, 1]);
    }

    fn dispatch_grid<P: bytemuck::Pod>(&mut self, kernel: &Kernel, params: &P, buffers: &[&wgpu::Buffer], groups: [u32; 3]) {
        let ub = self.ctx.uniform("params", params);
        let mut res = vec![ub.as_entire_binding()];
        res.extend(buffers.iter().map(|b| b.as_entire_binding()));
        let bg = self.ctx.bind_group(kernel, &res);
        let mut pass = self.encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        drop(pass);
        self.keep.push(ub);
    }
}

/// Runs `g` forward on the GPU; returns every graph output by name.
pub fn forward_gpu(ctx: &GpuContext, g: &Graph, weights: &Weights, inputs: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let shapes = infer_shapes(g)?;
    // Kernel parameters are u32: refuse what would not fit before recording anything.
    for (t, s) in shapes.iter().chain(g.params.iter()) {
        let n = crate::tensor::checked_numel(s).unwrap_or(usize::MAX);
        if n > u32::MAX as usize {
            return Err(Error::Limit { what: format!("elements of tensor `{}` (u32 kernel sizes)", t), need: n as u64, have: u32::MAX as u64 });
        }
    }
    let mut consumers: HashMap<&str, usize> = HashMap::new();
    for n in &g.nodes {
        for t in &n.inputs {
            *consumers.entry(t).or_default() += 1;
        }
    }
    let mut bufs: HashMap<String, Rc<wgpu::Buffer>> = HashMap::new();
    for v in &g.inputs {
        let t = inputs.get(&v.name).ok_or_else(|| Error::tensor(&v.name, "graph input not supplied"))?;
        bufs.insert(v.name.clone(), Rc::new(ctx.storage(&v.name, t.data())));
    }
    let mut params: HashMap<&str, Rc<wgpu::Buffer>> = HashMap::new();
    let mut param = |name: &str| -> Result<Rc<wgpu::Buffer>> {
        if let Some(b) = params.get(name) {
            return Ok(b.clone());
        }
        let b = Rc::new(ctx.storage(name, weights.get(name)?.data()));
        let key: &str = g.params.get_key_value(name).map(|(k, _)| k.as_str()).unwrap_or("");
        if !key.is_empty() {
            params.insert(key, b.clone());
        }
        Ok(b)
    };
    let dummy = ctx.storage("dummy", &[0.0]);
    let mut rec = Recorder { ctx, encoder: ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") }), keep: vec![] };
    let mut fused_act: HashMap<String, String> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if let Some(alias) = fused_act.remove(&n.name) {
            // This activation already ran inside the conv before it.
            let b = bufs[&alias].clone();
            bufs.insert(n.outputs[0].clone(), b);
            continue;
        }
        let shape = |t: &str| shapes.get(t).cloned().ok_or_else(|| Error::unsupported(&n.name, format!("shape of `{}` unknown", t)));
        let out_shape = shape(&n.outputs[0])?;
        let numel: usize = out_shape.iter().product();
        let x = n.inputs.first().map(|t| bufs.get(t).cloned().ok_or_else(|| Error::Graph(format!("`{}` not computed", t)))).transpose()?;
        let out = match &n.op {
            Op::Conv2d(c) => {
                let xs = shape(&n.inputs[0])?;
                // Fuse a following activation when it is the conv's only reader.
                let next = g.nodes.get(i + 1).filter(|m| {
                    matches!(m.op, Op::Activation(_))
                        && m.inputs[0] == n.outputs[0]
                        && consumers.get(n.outputs[0].as_str()) == Some(&1)
                        && !g.outputs.contains(&n.outputs[0])
                });
                let act = next.and_then(|m| if let Op::Activation(a) = m.op { Some(a) } else { None });
                if let Some(m) = next {
                    fused_act.insert(m.name.clone(), n.outputs[0].clone());
                }
                let (act, alpha) = act_code(act);
                let p = ConvParams {
                    n: u(xs[0]),
                    c: u(xs[1]),
                    h: u(xs[2]),
                    w: u(xs[3]),
                    o: u(c.out_channels),
                    ho: u(out_shape[2]),
                    wo: u(out_shape[3]),
                    groups: u(c.groups),
                    kh: u(c.kernel[0]),
                    kw: u(c.kernel[1]),
                    sh: u(c.stride[0]),
                    sw: u(c.stride[1]),
                    pt: u(c.pads[0]),
                    pl: u(c.pads[1]),
                    dh: u(c.dilation[0]),
                    dw: u(c.dilation[1]),
                    has_bias: c.bias.is_some() as u32,
                    act,
                    alpha,
                    _pad: 0,
                };
                let w = param(&c.weight)?;
                let b = c.bias.as_deref().map(&mut param).transpose()?;
                let y = ctx.empty(&n.name, numel)?;
                let bufs = [x.as_ref().expect("one input").as_ref(), &w, b.as_deref().unwrap_or(&dummy), &y];
                // The tiled implicit GEMM needs enough output channels per group and
                // reduction length to fill its 64-wide tiles; depthwise and tiny convs
                // run one output per invocation.
                let (per_out, k_len) = (c.out_channels / c.groups, (c.in_channels / c.groups) * c.kernel[0] * c.kernel[1]);
                let pixels = xs[0] * out_shape[2] * out_shape[3];
                if per_out >= 16 && k_len >= 8 && pixels.div_ceil(64) <= 65535 && c.groups <= 65535 {
                    rec.dispatch_grid(
                        &*ctx.kernel(KernelId::Conv2dTiled)?,
                        &p,
                        &bufs,
                        [pixels.div_ceil(64) as u32, per_out.div_ceil(64) as u32, c.groups as u32],
                    );
                } else {
                    rec.dispatch(&*ctx.kernel(KernelId::Conv2d)?, &p, &bufs, numel);
                }
                y
            }
            Op::Linear(l) => {
                let p = LinearParams { n: u(out_shape[0]), fin: u(l.in_features), fout: u(l.out_features), has_bias: l.bias.is_some() as u32 };
                let w = param(&l.weight)?;
                let b = l.bias.as_deref().map(&mut param).transpose()?;
                let y = ctx.empty(&n.name, numel)?;
                rec.dispatch(&*ctx.kernel(KernelId::Linear)?, &p, &[x.as_ref().expect("one input"), &w, b.as_deref().unwrap_or(&dummy), &y], numel);
                y
            }
            Op::BatchNorm(b) => {
                let mut stats = Vec::with_capacity(4 * b.channels);
                for t in [&b.gamma, &b.beta, &b.mean, &b.var] {
                    stats.extend_from_slice(weights.get(t)?.data());
                }
                let sb = ctx.storage(&n.name, &stats);
                let inner = numel / (out_shape[0] * b.channels).max(1);
                let p = ElementwiseParams { op: 0, numel: u(numel), channels: u(b.channels), inner: u(inner), act: 0, alpha: 0.0, eps: b.eps, _pad: 0 };
                let y = ctx.empty(&n.name, numel)?;
                rec.dispatch(&*ctx.kernel(KernelId::Elementwise)?, &p, &[x.as_ref().expect("one input"), &dummy, &sb, &y], numel);
                rec.keep.push(sb);
                y
            }
            Op::Activation(a) => {
                let (act, alpha) = act_code(Some(*a));
                let p = ElementwiseParams { op: 1, numel: u(numel), act, alpha, ..Default::default() };
                let y = ctx.empty(&n.name, numel)?;
                rec.dispatch(&*ctx.kernel(KernelId::Elementwise)?, &p, &[x.as_ref().expect("one input"), &dummy, &dummy, &y], numel);
                y
            }
            Op::Add => {
                let mut acc = x.expect("one input");
                for t in &n.inputs[1..] {
                    let p = ElementwiseParams { op: 2, numel: u(numel), ..Default::default() };
                    let y = ctx.empty(&n.name, numel)?;
                    rec.dispatch(&*ctx.kernel(KernelId::Elementwise)?, &p, &[&acc, &bufs[t], &dummy, &y], numel);
                    acc = Rc::new(y);
                }
                bufs.insert(n.outputs[0].clone(), acc);
                continue;
            }
            Op::AvgPool2d(_) | Op::GlobalAvgPool => {
                let xs = shape(&n.inputs[0])?;
                let mut p = PoolParams {
                    planes: u(xs[0] * xs[1]),
                    h: u(xs[2]),
                    w: u(xs[3]),
                    ho: u(out_shape[2]),
                    wo: u(out_shape[3]),
                    kh: u(xs[2]),
                    kw: u(xs[3]),
                    sh: 1,
                    sw: 1,
                    count_include_pad: 1,
                    ..Default::default()
                };
                if let Op::AvgPool2d(a) = &n.op {
                    (p.kh, p.kw, p.sh, p.sw) = (u(a.kernel[0]), u(a.kernel[1]), u(a.stride[0]), u(a.stride[1]));
                    (p.pt, p.pl, p.pb, p.pr) = (u(a.pads[0]), u(a.pads[1]), u(a.pads[2]), u(a.pads[3]));
                    p.count_include_pad = a.count_include_pad as u32;
                }
                let y = ctx.empty(&n.name, numel)?;
                rec.dispatch(&*ctx.kernel(KernelId::Pool)?, &p, &[x.as_ref().expect("one input"), &y], numel);
                y
            }
            Op::Concat => {
                let y = ctx.empty(&n.name, numel)?;
                let batch = out_shape[0];
                let mut at = 0u64;
                for b in 0..batch {
                    for t in &n.inputs {
                        let per = (shape(t)?.iter().product::<usize>() / batch) as u64;
                        rec.encoder.copy_buffer_to_buffer(&bufs[t], b as u64 * per * 4, &y, at * 4, per * 4);
                        at += per;
                    }
                }
                y
            }
            Op::Flatten => {
                let b = x.expect("one input");
                bufs.insert(n.outputs[0].clone(), b);
                continue;
            }
            Op::Opaque(o) => return Err(Error::unsupported(&n.name, format!("the GPU forward cannot run op `{}`", o.op_type))),
        };
        bufs.insert(n.outputs[0].clone(), Rc::new(out));
    }
    let outs: Vec<(String, Rc<wgpu::Buffer>, Vec<usize>)> = g
        .outputs
        .iter()
        .map(|o| {
            Ok((
                o.clone(),
                bufs.get(o).cloned().ok_or_else(|| Error::Graph(format!("output `{}` not computed", o)))?,
                shapes.get(o).cloned().unwrap_or_default(),
            ))
        })
        .collect::<Result<_>>()?;
    let ranges: Vec<(&wgpu::Buffer, u64, u64)> = outs.iter().map(|(_, b, s)| (b.as_ref(), 0, s.iter().product::<usize>() as u64)).collect();
    let Recorder { encoder, .. } = rec;
    let data = ctx.submit_and_read(encoder, &ranges)?;
    Ok(outs.into_iter().zip(data).map(|((name, _, shape), d)| (name, Tensor::from_parts(shape, d))).collect())
}

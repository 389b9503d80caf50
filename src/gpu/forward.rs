//! Forward pass of a graph on the GPU for verification: every node's dispatch is
//! recorded into one command encoder and the outputs come back in one readback, so a
//! whole network is one submission. A conv followed only by an activation runs as one
//! dispatch with the activation fused.

use std::collections::HashMap;
use std::rc::Rc;

use super::context::{grid, GpuContext};
use super::records::gpu_record;
use super::shaders::KernelId;
use crate::error::{Error, Result};
use crate::graph::{infer_shapes, Activation, Graph, Node, Op, Shapes};
use crate::tensor::Tensor;
use crate::weights::Weights;

gpu_record! {
    /// Uniform of `conv2d.wgsl`/`conv2d_tiled.wgsl`; layout must match the WGSL struct.
    ConvParams as Params {
        /// Batch size.
        n: u32,
        /// Input channels.
        c: u32,
        /// Input height.
        h: u32,
        /// Input width.
        w: u32,
        /// Output channels.
        o: u32,
        /// Output height.
        ho: u32,
        /// Output width.
        wo: u32,
        /// Group count.
        groups: u32,
        /// Kernel height.
        kh: u32,
        /// Kernel width.
        kw: u32,
        /// Vertical stride.
        sh: u32,
        /// Horizontal stride.
        sw: u32,
        /// Top padding.
        pt: u32,
        /// Left padding.
        pl: u32,
        /// Vertical dilation.
        dh: u32,
        /// Horizontal dilation.
        dw: u32,
        /// 1 when the bias binding holds a real bias.
        has_bias: u32,
        /// Fused activation code (see `act_code`); 0 for none.
        act: u32,
        /// Activation parameter (LeakyRelu slope).
        alpha: f32,
        /// Padding to a 16-byte multiple.
        _pad: u32,
    }
}

gpu_record! {
    /// Uniform of `elementwise.wgsl`; layout must match the WGSL struct.
    ElementwiseParams as Params {
        /// 0: per-channel piecewise affine, 1: activation, 2: add.
        op: u32,
        /// Elements to process.
        numel: u32,
        /// Channel count (per-channel affine only).
        channels: u32,
        /// Elements per channel plane, H*W (per-channel affine only).
        inner: u32,
        /// Activation code (see `act_code`).
        act: u32,
        /// Activation parameter (LeakyRelu slope).
        alpha: f32,
        /// Padding to a 16-byte multiple.
        _pad0: u32,
        /// Padding to a 16-byte multiple.
        _pad1: u32,
    }
}

gpu_record! {
    /// Uniform of `pool.wgsl`; layout must match the WGSL struct.
    PoolParams as Params {
        /// Planes to pool, N*C.
        planes: u32,
        /// Input height.
        h: u32,
        /// Input width.
        w: u32,
        /// Output height.
        ho: u32,
        /// Output width.
        wo: u32,
        /// Window height.
        kh: u32,
        /// Window width.
        kw: u32,
        /// Vertical stride.
        sh: u32,
        /// Horizontal stride.
        sw: u32,
        /// Top padding.
        pt: u32,
        /// Left padding.
        pl: u32,
        /// Bottom padding.
        pb: u32,
        /// Right padding.
        pr: u32,
        /// 1 to divide by the full window, padding included.
        count_include_pad: u32,
        /// Padding to a 16-byte multiple.
        _pad0: u32,
        /// Padding to a 16-byte multiple.
        _pad1: u32,
    }
}

gpu_record! {
    /// Uniform of `linear.wgsl`; layout must match the WGSL struct.
    LinearParams as Params {
        /// Batch size.
        n: u32,
        /// Input features.
        fin: u32,
        /// Output features.
        fout: u32,
        /// 1 when the bias binding holds a real bias.
        has_bias: u32,
    }
}

/// Activation code shared with `activation.wgsl` (0: none; see `Activation::gpu_code`).
pub fn act_code(a: Option<Activation>) -> (u32, f32) {
    a.map_or((0, 0.0), Activation::gpu_code)
}

/// A size that `forward_gpu` proved fits in u32 before recording anything (every
/// tensor of the graph has at most u32::MAX elements, so every dimension and offset
/// derived from one does too).
fn u(x: usize) -> u32 {
    debug_assert!(x <= u32::MAX as usize, "forward_gpu's size check missed {}", x);
    x as u32
}

/// Everything recorded for one forward: one command encoder, the buffers it must keep
/// alive until submission, and the parameters uploaded so far (each once).
struct Recorder<'a> {
    ctx: &'a GpuContext,
    weights: &'a Weights,
    encoder: wgpu::CommandEncoder,
    keep: Vec<wgpu::Buffer>,
    params: HashMap<String, Rc<wgpu::Buffer>>,
    dummy: Rc<wgpu::Buffer>,
}

/// What a node's GPU forward produced.
pub enum GpuValue {
    /// A buffer it wrote.
    New(wgpu::Buffer),
    /// An existing buffer holding its output already (a reshape, a one-input sum).
    Same(Rc<wgpu::Buffer>),
}

/// One node's view of the GPU forward, handed to its op's `OpDef::forward_gpu`: its
/// shapes and inputs, parameter uploads, output allocation and dispatch recording.
pub struct GpuStep<'s, 'a> {
    rec: &'s mut Recorder<'a>,
    node: &'s Node,
    shapes: &'s Shapes,
    bufs: &'s HashMap<String, Rc<wgpu::Buffer>>,
    out_shape: Vec<usize>,
    /// The activation right after this node when it may run inside this node's
    /// dispatch (it is the only reader), with its node's name.
    next_activation: Option<(&'s str, Activation)>,
    fused: &'s mut HashMap<String, String>,
}

impl GpuStep<'_, '_> {
    /// A size proved to fit the u32 kernel parameters (see `forward_gpu`).
    pub fn u32(x: usize) -> u32 {
        u(x)
    }

    /// The shape of tensor `t`.
    pub fn shape(&self, t: &str) -> Result<Vec<usize>> {
        self.shapes.get(t).cloned().ok_or_else(|| Error::unsupported(&self.node.name, format!("shape of `{}` unknown", t)))
    }

    /// The shape of the node's (first) output.
    pub fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    /// The buffer of the node's input `i`.
    pub fn input(&self, i: usize) -> Result<Rc<wgpu::Buffer>> {
        let t = self.node.inputs.get(i).ok_or_else(|| Error::shape(&self.node.name, "inputs", format!("no input {}", i)))?;
        self.bufs.get(t).cloned().ok_or_else(|| Error::Graph(format!("`{}` not computed", t)))
    }

    /// The conv kernel this adapter runs (see [`crate::gpu::ConvKernel`]).
    pub fn conv_kernel(&self) -> crate::gpu::ConvKernel {
        self.rec.ctx.conv_kernel
    }

    /// The weights of the graph.
    pub fn weights(&self) -> &Weights {
        self.rec.weights
    }

    /// Parameter tensor `name` on the device (uploaded once per forward).
    pub fn param(&mut self, name: &str) -> Result<Rc<wgpu::Buffer>> {
        if let Some(b) = self.rec.params.get(name) {
            return Ok(b.clone());
        }
        let b = Rc::new(self.rec.ctx.storage(name, self.rec.weights.get(name)?.data()));
        self.rec.params.insert(name.to_string(), b.clone());
        Ok(b)
    }

    /// A one-element buffer for bindings a dispatch does not read (no bias).
    pub fn dummy(&self) -> Rc<wgpu::Buffer> {
        self.rec.dummy.clone()
    }

    /// A new buffer for the node's output.
    pub fn output(&self) -> Result<wgpu::Buffer> {
        self.rec.ctx.empty(&self.node.name, self.out_shape.iter().product())
    }

    /// Records `kernel` over one invocation per output element.
    pub fn dispatch<P: bytemuck::Pod>(&mut self, kernel: KernelId, params: &P, buffers: &[&wgpu::Buffer]) -> Result<()> {
        let (x, y) = grid(self.out_shape.iter().product());
        self.dispatch_grid(kernel, params, buffers, [x, y, 1])
    }

    /// Records `kernel` over `groups` workgroups.
    pub fn dispatch_grid<P: bytemuck::Pod>(&mut self, kernel: KernelId, params: &P, buffers: &[&wgpu::Buffer], groups: [u32; 3]) -> Result<()> {
        let kernel = self.rec.ctx.kernel(kernel)?;
        let ub = self.rec.ctx.uniform("params", params);
        let mut res = vec![ub.as_entire_binding()];
        res.extend(buffers.iter().map(|b| b.as_entire_binding()));
        let bg = self.rec.ctx.bind_group(&kernel, &res);
        let mut pass = self.rec.encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(&self.node.name), timestamp_writes: None });
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        drop(pass);
        self.rec.keep.push(ub);
        Ok(())
    }

    /// Records a copy of `size` bytes between buffers.
    pub fn copy(&mut self, src: &wgpu::Buffer, src_offset: u64, dst: &wgpu::Buffer, dst_offset: u64, size: u64) {
        self.rec.encoder.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, size);
    }

    /// The activation that follows this node, if it can run inside this node's
    /// dispatch; taking it means this node applies it (its own node then only
    /// aliases this node's output).
    pub fn take_following_activation(&mut self) -> Option<Activation> {
        let (name, a) = self.next_activation.take()?;
        self.fused.insert(name.to_string(), self.node.outputs[0].clone());
        Some(a)
    }

    /// `y = (x >= 0 ? pos[c] : neg[c]) * x + shift[c]` over channel axis 1 of the
    /// first input (`elementwise.wgsl` op 0): batch norm, PReLU, per-channel scales.
    pub fn channel_affine(&mut self, pos: &[f32], neg: &[f32], shift: &[f32]) -> Result<GpuValue> {
        let channels = pos.len();
        if neg.len() != channels || shift.len() != channels {
            return Err(Error::shape(&self.node.name, "channels", "per-channel affine with tables of different lengths"));
        }
        let numel: usize = self.out_shape.iter().product();
        let inner = numel / (self.out_shape[0] * channels).max(1);
        let table = self.rec.ctx.storage(&self.node.name, &[pos, neg, shift].concat());
        let p = ElementwiseParams { op: 0, numel: u(numel), channels: u(channels), inner: u(inner), ..Default::default() };
        let (x, dummy, y) = (self.input(0)?, self.dummy(), self.output()?);
        self.dispatch(KernelId::Elementwise, &p, &[&x, &dummy, &table, &y])?;
        self.rec.keep.push(table);
        Ok(GpuValue::New(y))
    }

    /// Activation `a` on the first input (`elementwise.wgsl` op 1).
    pub fn activation(&mut self, a: Activation) -> Result<GpuValue> {
        let (act, alpha) = act_code(Some(a));
        let p = ElementwiseParams { op: 1, numel: u(self.out_shape.iter().product()), act, alpha, ..Default::default() };
        let (x, dummy, y) = (self.input(0)?, self.dummy(), self.output()?);
        self.dispatch(KernelId::Elementwise, &p, &[&x, &dummy, &dummy, &y])?;
        Ok(GpuValue::New(y))
    }

    /// `a + b`, both of the output's shape (`elementwise.wgsl` op 2).
    pub fn add2(&mut self, a: &wgpu::Buffer, b: &wgpu::Buffer) -> Result<wgpu::Buffer> {
        let p = ElementwiseParams { op: 2, numel: u(self.out_shape.iter().product()), ..Default::default() };
        let (dummy, y) = (self.dummy(), self.output()?);
        self.dispatch(KernelId::Elementwise, &p, &[a, b, &dummy, &y])?;
        Ok(y)
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
    let mut rec = Recorder {
        ctx,
        weights,
        encoder: ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") }),
        keep: vec![],
        params: HashMap::new(),
        dummy: Rc::new(ctx.storage("dummy", &[0.0])),
    };
    let mut fused: HashMap<String, String> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if let Some(alias) = fused.remove(&n.name) {
            // This activation already ran inside the node before it.
            let b = bufs[&alias].clone();
            bufs.insert(n.outputs[0].clone(), b);
            continue;
        }
        let out_shape = shapes.get(&n.outputs[0]).cloned().ok_or_else(|| Error::unsupported(&n.name, format!("shape of `{}` unknown", n.outputs[0])))?;
        // An activation that alone reads this node's output may run in its dispatch.
        let next_activation = g.nodes.get(i + 1).and_then(|m| match m.op {
            Op::Activation(a) if m.inputs[0] == n.outputs[0] && consumers.get(n.outputs[0].as_str()) == Some(&1) && !g.outputs.contains(&n.outputs[0]) => {
                Some((m.name.as_str(), a))
            }
            _ => None,
        });
        let mut step = GpuStep { rec: &mut rec, node: n, shapes: &shapes, bufs: &bufs, out_shape, next_activation, fused: &mut fused };
        let out = match n.op.def().forward_gpu(n, &mut step)? {
            GpuValue::New(b) => Rc::new(b),
            GpuValue::Same(b) => b,
        };
        bufs.insert(n.outputs[0].clone(), out);
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

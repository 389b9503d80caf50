//! `repfuse bench`: fuse and forward timings with their baselines measured in the
//! same run (host memcpy of the same bytes for the CPU plan, a device
//! buffer-to-buffer copy for the GPU plan), so results compare across machines.

pub mod e2e;

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::fuse::{fuse, FuseOptions};
use crate::gpu::GpuContext;
use crate::verify::{random_inputs, Tolerance};

/// Median wall time of `reps` runs of `f`, in milliseconds.
pub fn median_ms<T>(reps: usize, f: impl FnMut() -> Result<T>) -> Result<f64> {
    median_ms_after(reps, || Ok(()), f)
}

/// `median_ms` of `f`, each run preceded by an untimed `before` (removing a
/// benchmark's previous output, so every run writes a new file).
pub fn median_ms_after<T>(reps: usize, mut before: impl FnMut() -> Result<()>, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    let mut t = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        before()?;
        let s = Instant::now();
        let made = std::hint::black_box(f()?);
        t.push(s.elapsed().as_secs_f64() * 1e3);
        // Dropped after the clock stops: a stage's time is making its result, not
        // freeing it (the command frees most of it at exit, in one unmap).
        drop(made);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// GPU plan timings of one model, next to a device copy of the same bytes.
#[derive(Debug, Serialize)]
pub struct GpuPlanBench {
    /// Adapter name as wgpu reports it, so results name the card they came from.
    pub adapter: String,
    /// Wall time: upload, compute, download.
    pub plan_ms: f64,
    /// Compute passes alone, from timestamp queries.
    pub compute_ms: Option<f64>,
    /// `plan_ms - compute_ms`: upload, download and host work; `None` without timestamps.
    pub transfer_and_host_ms: Option<f64>,
    /// Median device buffer-to-buffer copy of the plan's bytes read + written, in ms (the baseline).
    pub device_copy_ms: f64,
    /// device copy time / compute time (wall time without timestamps): the fraction
    /// of copy bandwidth the plan's compute reaches.
    pub bandwidth_fraction: f64,
    /// Median time of `copy.wgsl` moving the same bytes, at its best dispatch size:
    /// what a compute kernel that only moves data reaches on this adapter (the
    /// roofline for the weight kernels; on lavapipe far below the buffer copy).
    pub shader_copy_ms: f64,
    /// Workgroups of the best shader-copy dispatch.
    pub shader_copy_workgroups: u32,
    /// device copy time / shader copy time: the most any compute kernel showed here.
    pub shader_copy_fraction: f64,
    /// shader copy time / plan compute time: the plan's fraction of the roofline.
    pub fraction_of_shader_copy: f64,
    /// Queue submissions one plan execution takes.
    pub submissions: usize,
    /// Each kernel's achieved bandwidth next to the same-run device copy's (from the
    /// run with the median compute time); empty without timestamps.
    pub kernels: Vec<KernelBench>,
}

/// One weight kernel's roofline position in a plan execution.
#[derive(Debug, Serialize)]
pub struct KernelBench {
    /// The kernel.
    pub kernel: String,
    /// Its passes' time, from timestamps.
    pub ms: f64,
    /// Bytes its jobs read and write.
    pub bytes: u64,
    /// `bytes / ms`, in GB/s.
    pub gb_per_s: f64,
    /// Its GB/s over the same-run device copy's.
    pub fraction_of_copy: f64,
    /// Its GB/s over the same-run shader copy's (`copy.wgsl`).
    pub fraction_of_shader_copy: f64,
    /// GFLOP/s of a compute-bound kernel (`compose`), to set beside the conv
    /// forward's; `None` for kernels bound by memory traffic.
    pub gflop_per_s: Option<f64>,
}

/// CPU forward pass of the training form against the deploy form on one input.
#[derive(Debug, Serialize)]
pub struct ForwardBench {
    /// Batch size of the input (N).
    pub batch: usize,
    /// Spatial input size in pixels (H = W).
    pub size: usize,
    /// Median forward time of the training-form graph, in ms.
    pub original_ms: f64,
    /// Median forward time of the fused deploy graph, in ms.
    pub fused_ms: f64,
    /// Training-form throughput: its FLOPs / `original_ms`, in GFLOP/s.
    pub original_gflops: f64,
    /// Deploy-form throughput: its FLOPs / `fused_ms`, in GFLOP/s.
    pub fused_gflops: f64,
    /// `original_ms / fused_ms`; above 1 means the fused model is faster.
    pub speedup: f64,
}

/// One row of `repfuse bench`: fuse cost of a zoo model, with its baselines.
#[derive(Debug, Serialize)]
pub struct ModelBench {
    /// Zoo model name (see `zoo::MODELS`).
    pub model: String,
    /// Parameter count (f32 elements) of the training form.
    pub params_train: usize,
    /// Parameter count (f32 elements) of the deploy form.
    pub params_deploy: usize,
    /// Bytes of source weights the plan reads.
    pub bytes_read: usize,
    /// Bytes of deploy weights the plan writes.
    pub bytes_written: usize,
    /// Median time of the graph rewrite alone (no weight arithmetic), in ms.
    pub rewrite_ms: f64,
    /// Median time of the CPU plan execution (weight arithmetic), in ms.
    pub cpu_plan_ms: f64,
    /// `rewrite_ms + cpu_plan_ms`: the whole CPU fuse, in ms.
    pub cpu_fuse_ms: f64,
    /// Median host memcpy of the bytes read + written, in ms (the CPU baseline).
    pub memcpy_ms: f64,
    /// CPU fuse time (rewrite + plan) / memcpy time of the bytes read and written.
    pub cpu_ratio_to_memcpy: f64,
    /// GPU plan timings; `None` without an adapter.
    pub gpu: Option<GpuPlanBench>,
    /// Forward timings; `None` unless `BenchOptions::forward_size` is set.
    pub forward: Option<ForwardBench>,
}

/// Host memcpy of `bytes` (read + write), the CPU plan's baseline.
fn memcpy_ms(bytes: usize, reps: usize) -> Result<f64> {
    let src = vec![1u8; bytes.max(1)];
    let mut dst = vec![0u8; bytes.max(1)];
    median_ms(reps, || {
        dst.copy_from_slice(&src);
        Ok(dst[bytes / 2])
    })
}

/// Device buffer-to-buffer copy of `bytes`, the GPU plan's baseline (one submission).
fn device_copy_ms(ctx: &GpuContext, bytes: usize, reps: usize) -> Result<f64> {
    let n = bytes.div_ceil(4).max(1);
    // Plain copy buffers: no storage binding, so no binding-size limit.
    let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let (a, b) = (sized_buffer(ctx, "copy_src", n as u64 * 4, usage)?, sized_buffer(ctx, "copy_dst", n as u64 * 4, usage)?);
    median_ms(reps, || {
        let mut e = ctx.device.create_command_encoder(&Default::default());
        e.copy_buffer_to_buffer(&a, 0, &b, 0, n as u64 * 4);
        ctx.submit_and_read(e, &[(&b, 0, 1)])
    })
}

/// `copy.wgsl` moving `bytes` (half read, half written), the compute roofline:
/// (median ms, workgroups per piece) of the fastest of a few dispatch sizes, since the
/// best grid differs between adapters (lavapipe pays for every idle invocation). The
/// bytes go in pieces of at most one storage binding, all dispatched in one pass, as
/// the plan's windows are: a model whose plan moves more than one binding (RepVGG-B1
/// and up on lavapipe's 128 MiB) still gets its baseline.
fn shader_copy_ms(ctx: &GpuContext, bytes: usize, reps: usize) -> Result<(f64, u32)> {
    use crate::gpu::shaders::KernelId;
    let half = (bytes / 32).max(1) as u64 * 16;
    let pieces = binding_pieces(half, ctx.limits.max_storage_buffer_binding_size, ctx.limits.min_storage_buffer_offset_alignment as u64);
    let src = sized_buffer(ctx, "shader_copy_src", half, wgpu::BufferUsages::STORAGE)?;
    let dst = sized_buffer(ctx, "shader_copy_dst", half, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC)?;
    let kernel = ctx.kernel(KernelId::Copy)?;
    fn range(b: &wgpu::Buffer, (offset, size): (u64, u64)) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: b, offset, size: std::num::NonZeroU64::new(size) })
    }
    let groups: Vec<wgpu::BindGroup> = pieces.iter().map(|&p| ctx.bind_group(&kernel, &[range(&src, p), range(&dst, p)])).collect();
    let mut best = (f64::INFINITY, 0);
    for per_invocation in [1usize, 4, 16, 64] {
        let workgroups = |(_, size): (u64, u64)| (size as usize / 16).div_ceil(256 * per_invocation).clamp(1, 65535) as u32;
        let ms = median_ms(reps, || {
            let mut e = ctx.device.create_command_encoder(&Default::default());
            {
                let mut p = e.begin_compute_pass(&Default::default());
                p.set_pipeline(&kernel.pipeline);
                for (group, &piece) in groups.iter().zip(&pieces) {
                    p.set_bind_group(0, group, &[]);
                    p.dispatch_workgroups(workgroups(piece), 1, 1);
                }
            }
            ctx.submit_and_read(e, &[(&dst, 0, 1)])
        })?;
        if ms < best.0 {
            best = (ms, workgroups(pieces[0]));
        }
    }
    Ok(best)
}

/// An uninitialised buffer of `size` bytes, refused with `Error::Limit` above the
/// adapter's largest buffer (wgpu would record a validation error instead).
fn sized_buffer(ctx: &GpuContext, label: &str, size: u64, usage: wgpu::BufferUsages) -> Result<wgpu::Buffer> {
    if size > ctx.limits.max_buffer_size {
        return Err(crate::Error::Limit { what: format!("max_buffer_size ({})", label), need: size, have: ctx.limits.max_buffer_size });
    }
    Ok(ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false }))
}

/// `total` bytes as (offset, size) pieces of at most `binding` bytes, each offset a
/// multiple of `align` and every size a multiple of 16 (one vec4).
fn binding_pieces(total: u64, binding: u64, align: u64) -> Vec<(u64, u64)> {
    let align = align.max(16);
    let piece = (binding.min(total) / align * align).max(align.min(total));
    (0..total.div_ceil(piece)).map(|i| (i * piece, piece.min(total - i * piece))).collect()
}

/// What `bench_model` measures and how often.
#[derive(Clone, Copy)]
pub struct BenchOptions {
    /// Timed runs per measurement; the median is reported (forward passes cap at 3).
    pub reps: usize,
    /// Input size (H = W) for forward timings; `None` skips them.
    pub forward_size: Option<usize>,
}

/// Benchmarks `name`: a zoo model (built at 224x224) or a model file (`.onnx`, or
/// `.json` with its `.safetensors`), so a real model's kernels are timed on any
/// adapter: rewrite, CPU plan and, with `gpu`, GPU plan. The forward timing needs a
/// zoo model (it rebuilds the model at another input size); files skip it.
pub fn bench_model(name: &str, gpu: Option<&GpuContext>, o: &BenchOptions) -> Result<ModelBench> {
    let path = std::path::Path::new(name);
    // An existing file is a model file; `load_model` names the formats it reads.
    let is_file = path.is_file();
    let (g, w) = if is_file {
        let m = crate::io::load_model(path)?;
        (m.graph, m.weights)
    } else {
        let (g, w, _) =
            crate::zoo::build(name, 1, 224, 1).ok_or_else(|| crate::Error::Graph(format!("no zoo model `{}` and no model file of that name", name)))?;
        (g, w)
    };
    let o = &BenchOptions { forward_size: o.forward_size.filter(|_| !is_file), ..*o };
    let opts = FuseOptions::default();
    let rewrite_ms = median_ms(o.reps, || fuse(&g, &opts))?;
    let f = fuse(&g, &opts)?;
    let cpu_plan_ms = median_ms(o.reps, || crate::cpu::execute_plan(&f.plan, &w))?;
    let computed = crate::cpu::execute_plan(&f.plan, &w)?;
    let bytes_read: usize = f.plan.sources().iter().map(|s| w.get(s).map_or(0, |t| t.numel() * 4)).sum();
    let bytes_written: usize = computed.values().map(|t| t.numel() * 4).sum();
    let memcpy = memcpy_ms(bytes_read + bytes_written, o.reps)?;
    let gpu = match gpu {
        Some(ctx) => {
            let before = ctx.submissions();
            let first = crate::gpu::execute_plan_gpu(ctx, &f.plan, &w)?;
            let submissions = ctx.submissions() - before;
            // Timing a kernel that computes the wrong weights would be worthless: the
            // GPU's tensors must equal the CPU reference's, as the tests require.
            check_same(&first, &computed, Tolerance::f32_sums(16), &format!("{}: GPU plan", name))?;
            let mut runs = vec![];
            let plan_ms = median_ms(o.reps, || {
                let (out, t) = crate::gpu::execute_plan_gpu_timed(ctx, &f.plan, &w)?;
                if let Some(c) = t.compute_ms {
                    runs.push((c, t.kernels));
                }
                Ok(out)
            })?;
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let median = runs.get(runs.len() / 2);
            let compute_ms = median.map(|r| r.0);
            let device_copy_ms = device_copy_ms(ctx, bytes_read + bytes_written, o.reps)?;
            let copy_gbs = (bytes_read + bytes_written) as f64 / (device_copy_ms * 1e6);
            let (shader_copy_ms, shader_copy_workgroups) = shader_copy_ms(ctx, bytes_read + bytes_written, o.reps)?;
            let shader_gbs = (bytes_read + bytes_written) as f64 / (shader_copy_ms * 1e6);
            let kernels = median
                .map(|r| {
                    r.1.iter()
                        .map(|k| {
                            let gbs = k.bytes as f64 / (k.ms.max(1e-9) * 1e6);
                            KernelBench {
                                kernel: k.kernel.to_string(),
                                ms: k.ms,
                                bytes: k.bytes,
                                gb_per_s: gbs,
                                fraction_of_copy: gbs / copy_gbs,
                                fraction_of_shader_copy: gbs / shader_gbs,
                                gflop_per_s: (k.flops > 0).then(|| k.flops as f64 / (k.ms.max(1e-9) * 1e6)),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            // The target compares compute (not transfers) with the copy baseline.
            let fraction = device_copy_ms / compute_ms.unwrap_or(plan_ms);
            Some(GpuPlanBench {
                adapter: ctx.info.name.clone(),
                plan_ms,
                compute_ms,
                transfer_and_host_ms: compute_ms.map(|c| plan_ms - c),
                device_copy_ms,
                bandwidth_fraction: fraction,
                shader_copy_ms,
                shader_copy_workgroups,
                shader_copy_fraction: device_copy_ms / shader_copy_ms,
                fraction_of_shader_copy: shader_copy_ms / compute_ms.unwrap_or(plan_ms),
                submissions,
                kernels,
            })
        }
        None => None,
    };
    let forward = match o.forward_size {
        Some(size) => {
            let (g2, w2, _) = crate::zoo::build(name, 1, size, 1).expect("built above");
            let f2 = fuse(&g2, &opts)?;
            let fw = f2.weights_cpu(&w2)?;
            let inputs = random_inputs(&g2, 3);
            let original_ms = median_ms(o.reps.min(3), || crate::cpu::forward(&g2, &w2, &inputs))?;
            let fused_ms = median_ms(o.reps.min(3), || crate::cpu::forward(&f2.graph, &fw, &inputs))?;
            let gf = |flops: u64, ms: f64| flops as f64 / (ms * 1e6);
            Some(ForwardBench {
                batch: 1,
                size,
                original_ms,
                fused_ms,
                original_gflops: gf(f2.report.flops_before, original_ms),
                fused_gflops: gf(f2.report.flops_after, fused_ms),
                speedup: original_ms / fused_ms,
            })
        }
        None => None,
    };
    let cpu_fuse_ms = rewrite_ms + cpu_plan_ms;
    Ok(ModelBench {
        model: name.to_string(),
        params_train: f.report.params_before,
        params_deploy: f.report.params_after,
        bytes_read,
        bytes_written,
        rewrite_ms,
        cpu_plan_ms,
        cpu_fuse_ms,
        memcpy_ms: memcpy,
        cpu_ratio_to_memcpy: cpu_fuse_ms / memcpy,
        gpu,
        forward,
    })
}

/// One layer of the conv forward bench: WGSL conv against the CPU reference.
#[derive(Debug, Serialize)]
pub struct ConvBench {
    /// Layer shape, human-readable, as printed in the bench table.
    pub shape: String,
    /// The WGSL kernel that ran it (the adapter's choice, or `REPFUSE_CONV_KERNEL`).
    pub kernel: crate::gpu::ConvKernel,
    /// Work of the layer in GFLOP (one multiply-add counted as 2).
    pub gflop: f64,
    /// Median GPU time, in ms.
    pub gpu_ms: f64,
    /// GPU throughput, in GFLOP/s.
    pub gpu_gflops: f64,
    /// Median CPU reference time, in ms.
    pub cpu_ms: f64,
    /// CPU throughput, in GFLOP/s.
    pub cpu_gflops: f64,
}

/// Fails unless every tensor of `reference` is in `actual` and within `tol` of it.
fn check_same(
    actual: &std::collections::HashMap<String, crate::tensor::Tensor>,
    reference: &std::collections::HashMap<String, crate::tensor::Tensor>,
    tol: Tolerance,
    what: &str,
) -> Result<()> {
    for (name, r) in reference {
        let a = actual.get(name).ok_or_else(|| crate::Error::Graph(format!("{}: `{}` was not computed", what, name)))?;
        let st = crate::verify::compare(a, r, tol)?;
        if !st.passed() {
            return Err(crate::Error::Graph(format!("{}: `{}` differs from the CPU reference ({:?}); not benchmarking a wrong kernel", what, name, st)));
        }
    }
    Ok(())
}

/// The WGSL 3x3 conv forward against the CPU reference conv on the same layer.
pub fn bench_conv(ctx: &GpuContext, c: usize, hw: usize, reps: usize) -> Result<ConvBench> {
    let mut b = crate::zoo::GraphBuilder::new(5);
    let x = b.input("x", &[1, c, hw, hw]);
    let y = b.conv(&x, crate::zoo::ConvSpec::same(c, 3, 1, 1));
    b.output(&y);
    let (g, w) = b.finish();
    let inputs = random_inputs(&g, 1);
    let gflop = (2 * c * c * 9 * hw * hw) as f64 / 1e9;
    let first = crate::gpu::forward_gpu(ctx, &g, &w, &inputs)?;
    check_same(&first, &crate::cpu::forward(&g, &w, &inputs)?, Tolerance::for_graph(&g), "WGSL conv forward")?;
    let gpu_ms = median_ms(reps, || crate::gpu::forward_gpu(ctx, &g, &w, &inputs))?;
    let cpu_ms = median_ms(reps, || crate::cpu::forward(&g, &w, &inputs))?;
    Ok(ConvBench {
        shape: format!("1x{}x{}x{} conv3x3 {}->{}", c, hw, hw, c, c),
        kernel: ctx.conv_kernel,
        gflop,
        gpu_ms,
        gpu_gflops: gflop / (gpu_ms / 1e3),
        cpu_ms,
        cpu_gflops: gflop / (cpu_ms / 1e3),
    })
}

#[cfg(test)]
mod tests {
    use super::binding_pieces;

    #[test]
    fn binding_pieces_cover_the_bytes_once_each_within_the_binding_and_aligned() {
        for (total, binding, align) in
            [(16u64, 1 << 27, 256), (300 << 20, 128 << 20, 256), ((128 << 20) + 16, 128 << 20, 256), (4096, 1000, 256), (1 << 20, 1 << 20, 64)]
        {
            let pieces = binding_pieces(total, binding, align);
            let mut next = 0;
            for &(offset, size) in &pieces {
                assert_eq!(offset, next, "{:?}", pieces);
                assert!(size > 0 && size <= binding && size % 16 == 0 && offset % align == 0, "{:?}", pieces);
                next += size;
            }
            assert_eq!(next, total, "{:?}", pieces);
        }
    }
}

//! criterion benches: each weight primitive (bytes/s), whole-network fusion on the CPU
//! and GPU backends (bytes/s), the conv forward (FLOP/s), and fused vs unfused forward
//! of one model. Baselines (host memcpy, device copy) are in `repfuse bench`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use repfuse::cpu::primitives::{self, BnTensors, ComposeInput, PlaceInput};
use repfuse::plan::ChannelMap;
use repfuse::verify::random_inputs;
use repfuse::zoo::{ConvSpec, GraphBuilder};
use repfuse::{fuse, FuseOptions, Tensor};

#[cfg(all(feature = "mimalloc", not(test)))]
#[path = "../src/alloc.rs"]
mod alloc;

/// The command's allocator, so the times are the command's (its tests run in the
/// binary's unit tests).
#[cfg(all(feature = "mimalloc", not(test)))]
#[global_allocator]
static ALLOCATOR: alloc::SplitAllocator = alloc::SplitAllocator;

fn t(shape: &[usize], seed: u32) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::new("t", shape.to_vec(), (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 1000.0 + 0.5).collect()).unwrap()
}

fn primitives_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("primitive");
    let (o, i) = (256, 256);
    let k3 = t(&[o, i, 3, 3], 1);
    let k1 = t(&[o, i, 1, 1], 2);
    let v = t(&[o], 3);
    let bn = BnTensors { gamma: &v, beta: &v, mean: &v, var: &v, eps: 1e-5 };
    g.throughput(Throughput::Bytes((k3.numel() * 8) as u64));
    g.bench_function("fold_bn 256x256x3x3", |b| b.iter(|| primitives::fold_bn(&k3, Some(&v), &bn).unwrap()));
    fn src(k: &Tensor, off: [usize; 2]) -> PlaceInput<'_> {
        PlaceInput { kernel: k, bias: None, groups: 1, offset: off, step: [1, 1], out_offset: 0, map: ChannelMap::IDENTITY, bn: None }
    }
    g.throughput(Throughput::Bytes(((k3.numel() * 2 + k1.numel()) * 4) as u64));
    g.bench_function("place 3x3+1x1 -> 3x3", |b| b.iter(|| primitives::place(&[o, i, 3, 3], 1, i, &[src(&k3, [0, 0]), src(&k1, [1, 1])]).unwrap()));
    g.throughput(Throughput::Bytes(((k3.numel() * 2 + k1.numel()) * 4) as u64));
    g.bench_function("compose 1x1 -> 3x3", |b| {
        b.iter(|| {
            primitives::compose(&ComposeInput { kernel: &k1, bias: Some(&v), groups: 1 }, &ComposeInput { kernel: &k3, bias: Some(&v), groups: 1 }, i, 1)
                .unwrap()
        })
    });
    g.finish();
}

fn networks_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("fuse");
    g.sample_size(10);
    let gpu = repfuse::gpu::GpuContext::new().ok();
    for name in ["repvgg_a0", "mobileone_s0"] {
        let (graph, w, _) = repfuse::zoo::build(name, 1, 224, 1).unwrap();
        let f = fuse(&graph, &FuseOptions::default()).unwrap();
        g.throughput(Throughput::Bytes(w.bytes() as u64));
        g.bench_function(BenchmarkId::new("rewrite", name), |b| b.iter(|| fuse(&graph, &FuseOptions::default()).unwrap()));
        g.bench_function(BenchmarkId::new("cpu_plan", name), |b| b.iter(|| repfuse::cpu::execute_plan(&f.plan, &w).unwrap()));
        if let Some(ctx) = &gpu {
            g.bench_function(BenchmarkId::new("gpu_plan", name), |b| b.iter(|| repfuse::gpu::execute_plan_gpu(ctx, &f.plan, &w).unwrap()));
        }
    }
    g.finish();
}

fn forward_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward");
    g.sample_size(10);
    let mut b = GraphBuilder::new(1);
    let x = b.input("x", &[1, 64, 56, 56]);
    let y = b.conv(&x, ConvSpec::same(64, 3, 1, 1));
    b.output(&y);
    let (graph, w) = b.finish();
    let inputs = random_inputs(&graph, 1);
    g.throughput(Throughput::Elements(2 * 64 * 64 * 9 * 56 * 56));
    g.bench_function("conv3x3 64x56x56 cpu", |bch| bch.iter(|| repfuse::cpu::forward(&graph, &w, &inputs).unwrap()));
    if let Ok(ctx) = repfuse::gpu::GpuContext::new() {
        g.bench_function(format!("conv3x3 64x56x56 wgsl ({})", ctx.info.name), |bch| {
            bch.iter(|| repfuse::gpu::forward_gpu(&ctx, &graph, &w, &inputs).unwrap())
        });
    }
    let (m, mw, _) = repfuse::zoo::build("repvgg_a0", 1, 96, 1).unwrap();
    let f = fuse(&m, &FuseOptions::default()).unwrap();
    let fw = f.weights_cpu(&mw).unwrap();
    let inputs = random_inputs(&m, 1);
    g.bench_function("repvgg_a0 96px unfused", |bch| bch.iter(|| repfuse::cpu::forward(&m, &mw, &inputs).unwrap()));
    g.bench_function("repvgg_a0 96px fused", |bch| bch.iter(|| repfuse::cpu::forward(&f.graph, &fw, &inputs).unwrap()));
    g.finish();
}

criterion_group!(benches, primitives_group, networks_group, forward_group);
criterion_main!(benches);

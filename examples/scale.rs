//! Scale check: a synthetic RepVGG-style network with >= 1e9 training-form parameters
//! fuses on the CPU backend (and the GPU where one is given); prints the time and the
//! peak resident memory against the size of the weights.
//!
//! cargo run --release --example scale [channels] [blocks] [gpu]   (default 2048 x 24)
//!
//! With `gpu`, the plan also runs through the WGSL engine (in windows below the
//! adapter's binding limit) and its output is compared with the CPU plan's.

use std::time::Instant;

use repfuse::zoo::{blocks, GraphBuilder};
use repfuse::{fuse, FuseOptions};

fn peak_rss_bytes() -> u64 {
    repfuse::bench::e2e::peak_rss_bytes().unwrap_or(0)
}

fn main() {
    let c: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2048);
    let n: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(24);
    let t = Instant::now();
    let mut b = GraphBuilder::new(1);
    let mut x = b.input("x", &[1, c, 4, 4]);
    for _ in 0..n {
        x = blocks::repvgg_block(&mut b, &x, c, 1, 1);
    }
    b.output(&x);
    let (g, w) = b.finish();
    let weights = w.bytes() as u64;
    let build_s = t.elapsed().as_secs_f64();
    let base_rss = peak_rss_bytes();
    let t = Instant::now();
    let f = fuse(&g, &FuseOptions::default()).unwrap();
    let rewrite_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let fw = f.weights_cpu(&w).unwrap();
    let plan_s = t.elapsed().as_secs_f64();
    let peak = peak_rss_bytes();
    if std::env::args().nth(3).as_deref() == Some("gpu") {
        let ctx = repfuse::gpu::GpuContext::new().expect("a GPU adapter");
        let t = Instant::now();
        let gw = repfuse::gpu::execute_plan_gpu(&ctx, &f.plan, &w).unwrap();
        let gpu_s = t.elapsed().as_secs_f64();
        // Against the CPU plan's deploy weights (the tensors the deploy graph names).
        let worst = gw
            .iter()
            .filter_map(|(n, t)| {
                fw.get(n).ok().map(|c| t.data().iter().zip(c.data()).map(|(a, b)| (a - b).abs() as f64 / (b.abs() as f64).max(1e-3)).fold(0.0, f64::max))
            })
            .fold(0.0, f64::max);
        println!(
            "GPU plan on {}: {:.2} s ({:.2} GB/s of weights), {} tensors, worst relative difference to the CPU plan {:.2e}; peak RSS now {:.2} GB",
            ctx.info.name,
            gpu_s,
            weights as f64 / 1e9 / gpu_s,
            gw.len(),
            worst,
            peak_rss_bytes() as f64 / 1e9
        );
    }
    println!(
        "{} training-form params ({:.2} GB), {} blocks of {} channels: built in {:.1} s; rewrite {:.3} s, CPU plan {:.2} s ({:.2} GB/s of weights); deploy params {}; peak RSS {:.2} GB = {:.2}x the weights (before fusing: {:.2} GB)",
        f.report.params_before,
        weights as f64 / 1e9,
        n,
        c,
        build_s,
        rewrite_s,
        plan_s,
        weights as f64 / 1e9 / plan_s,
        f.report.params_after,
        peak as f64 / 1e9,
        peak as f64 / weights as f64,
        base_rss as f64 / 1e9
    );
    drop(fw);
}

//! Times the CPU weight arithmetic alone (`execute_plan` on a zoo model's fused plan),
//! for profiling it:
//!
//! cargo run --release --example plan_time -- MODEL [reps]
//!
//! Prints the median over `reps` runs and the bytes the plan reads and writes.

use std::time::Instant;

use repfuse::{fuse, FuseOptions};

fn main() -> repfuse::Result<()> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "repvgg_a0".into());
    let reps: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let (g, w, _) = repfuse::zoo::build(&name, 1, 224, 1).ok_or_else(|| repfuse::Error::Graph(format!("no zoo model `{}`", name)))?;
    let f = fuse(&g, &FuseOptions::default())?;
    let mut times = vec![];
    let mut written = 0;
    for _ in 0..reps {
        let t = Instant::now();
        let out = repfuse::cpu::execute_plan(&f.plan, &w)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        written = out.values().map(|t| t.numel() * 4).sum::<usize>();
    }
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2];
    println!("{}: {} steps, plan {:.3} ms median of {} (min {:.3}), writes {:.1} MB", name, f.plan.steps.len(), ms, reps, times[0], written as f64 / 1e6);
    Ok(())
}

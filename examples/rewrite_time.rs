//! Times the rewrite alone (`fuse` on an imported graph), for profiling it:
//!
//! cargo run --release --example rewrite_time -- FILE.onnx [reps]
//! cargo run --release --example rewrite_time -- chain:BLOCKS [reps]
//!
//! Prints the median over `reps` runs and the time per training node.

use std::time::Instant;

use repfuse::{fuse, FuseOptions};

#[cfg(all(feature = "mimalloc", not(test)))]
#[path = "../src/alloc.rs"]
mod alloc;

/// The command's allocator, so the times are the command's (its tests run in the
/// binary's unit tests).
#[cfg(all(feature = "mimalloc", not(test)))]
#[global_allocator]
static ALLOCATOR: alloc::SplitAllocator = alloc::SplitAllocator;

fn main() -> repfuse::Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "chain:1000".into());
    let reps: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let graph = match what.strip_prefix("chain:") {
        Some(n) => {
            let mut b = repfuse::zoo::GraphBuilder::new(1);
            let mut x = b.input("x", &[1, 8, 8, 8]);
            for _ in 0..n.parse::<usize>().expect("chain:BLOCKS") {
                x = repfuse::zoo::blocks::repvgg_block(&mut b, &x, 8, 1, 1);
            }
            b.output(&x);
            b.finish().0
        }
        None => repfuse::io::onnx::read_onnx(std::path::Path::new(&what))?.graph,
    };
    let mut times = vec![];
    let mut waves = 0;
    for _ in 0..reps {
        let t = Instant::now();
        let f = fuse(&graph, &FuseOptions::default())?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        waves = f.report.waves;
        std::hint::black_box(f);
    }
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2];
    println!(
        "{}: {} nodes, {} waves, rewrite {:.3} ms median of {}, {:.2} us/node",
        what,
        graph.nodes.len(),
        waves,
        ms,
        reps,
        ms * 1e3 / graph.nodes.len() as f64
    );
    Ok(())
}

//! Embedding repfuse in an app: load an ONNX model, fuse it on the GPU (the CPU
//! reference when there is none), read the fused weights back, run a forward pass,
//! and check it against the original.
//!
//! cargo run --release --example embed [model.onnx]

use std::path::PathBuf;

use repfuse::{Backend, FuseOptions, Fuser};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/fixtures/z14_dbb_block/train.onnx")));
    let model = repfuse::io::load_model(&path)?;
    // One Fuser per app: it owns the GPU device and the compiled pipelines.
    let fuser = Fuser::new(Backend::Gpu);
    let fuser = match fuser.gpu() {
        Ok(ctx) => {
            println!("fusing on {} ({:?})", ctx.info.name, ctx.info.backend);
            fuser
        }
        Err(e) => {
            println!("no GPU ({}), using the CPU reference", e);
            Fuser::new(Backend::Cpu)
        }
    };
    let fused = fuser.fuse(&model.graph, &model.weights, &FuseOptions::default())?;
    println!("{}: {:?} -> {:?}", path.display(), fused.report.ops_before, fused.report.ops_after);
    for (name, t) in fused.weights.iter().take(3) {
        println!("  fused tensor {} {:?}, first values {:?}", name, t.shape(), &t.data()[..t.numel().min(4)]);
    }
    let inputs = repfuse::verify::random_inputs(&model.graph, 1);
    let outputs = match fuser.gpu() {
        Ok(ctx) if fused.backend == Backend::Gpu => repfuse::gpu::forward_gpu(ctx, &fused.graph, &fused.weights, &inputs)?,
        _ => repfuse::cpu::forward(&fused.graph, &fused.weights, &inputs)?,
    };
    let reference = repfuse::cpu::forward(&model.graph, &model.weights, &inputs)?;
    for (name, r) in &reference {
        let s = repfuse::verify::compare(&outputs[name], r, repfuse::verify::Tolerance::for_graph(&model.graph))?;
        println!("  output {}: max abs error {:.2e} vs the original ({})", name, s.max_abs, if s.passed() { "ok" } else { "OVER TOLERANCE" });
    }
    Ok(())
}

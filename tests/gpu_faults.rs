//! GPU faults give clear errors or a reported CPU fallback; none panics or hangs.

mod common;

use repfuse::gpu::GpuContext;
use repfuse::zoo::{blocks, ConvSpec, GraphBuilder};
use repfuse::{fuse, Backend, Error, FuseOptions, Fuser};

fn small_model() -> (repfuse::Graph, repfuse::Weights) {
    let mut b = GraphBuilder::new(1);
    let x = b.input("x", &[1, 4, 6, 6]);
    let y = blocks::repvgg_block(&mut b, &x, 4, 1, 1);
    b.output(&y);
    b.finish()
}

#[test]
fn gpu_a_region_larger_than_one_binding_is_a_limit_error() {
    common::gpu();
    let ctx = GpuContext::new().unwrap();
    // One 3x3 conv 2048->2048 + BN: a single region of ~300 MB, over lavapipe's
    // 128 MiB binding; it cannot be split, so it must be refused, not crash.
    let mut b = GraphBuilder::new(2);
    let x = b.input("x", &[1, 2048, 3, 3]);
    let y = b.conv_bn(&x, ConvSpec::same(2048, 3, 1, 1));
    b.output(&y);
    let (g, w) = b.finish();
    let f = fuse(&g, &FuseOptions::default()).unwrap();
    let need = 2 * w.bytes() as u64;
    if need <= ctx.limits.max_storage_buffer_binding_size {
        eprintln!("adapter binding limit {} is large enough; nothing to refuse", ctx.limits.max_storage_buffer_binding_size);
        return;
    }
    match repfuse::gpu::execute_plan_gpu(&ctx, &f.plan, &w) {
        Err(Error::Limit { what, need, have }) => assert!(what.contains("binding") && need > have, "{} {} {}", what, need, have),
        other => panic!("expected a Limit error, got {:?}", other.map(|m| m.len())),
    }
}

#[test]
fn gpu_an_allocation_the_device_refuses_is_an_error_not_a_panic() {
    common::gpu();
    let ctx = GpuContext::new().unwrap();
    let too_big = (ctx.limits.max_buffer_size / 4 + 16) as usize;
    assert!(matches!(ctx.empty("huge", too_big), Err(Error::Limit { .. })));
    // Going around the checks: wgpu reports a validation error, which we record
    // instead of panicking, and hand back as an Error.
    let _b = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("huge"),
        size: ctx.limits.max_buffer_size + 4096,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let err = ctx.take_error().unwrap_err().to_string();
    assert!(err.starts_with("gpu:"), "{}", err);
    // The context still works afterwards.
    let (g, w) = small_model();
    let f = fuse(&g, &FuseOptions::default()).unwrap();
    assert!(repfuse::gpu::execute_plan_gpu(&ctx, &f.plan, &w).is_ok());
}

#[test]
fn gpu_a_lost_device_gives_an_error_not_a_hang() {
    common::gpu();
    let ctx = GpuContext::new().unwrap();
    let (g, w) = small_model();
    let f = fuse(&g, &FuseOptions::default()).unwrap();
    ctx.device.destroy();
    let r = repfuse::gpu::execute_plan_gpu(&ctx, &f.plan, &w);
    assert!(r.is_err(), "work on a destroyed device must fail");
    eprintln!("lost device: {}", r.unwrap_err());
}

#[test]
fn no_matching_adapter_is_a_clear_error_and_auto_falls_back_to_the_cpu() {
    // This test binary's only test that touches WGPU_ADAPTER_NAME; the GPU tests above
    // open their contexts before or without it, and the var is restored.
    let before = std::env::var("WGPU_ADAPTER_NAME").ok();
    std::env::set_var("WGPU_ADAPTER_NAME", "no-such-adapter-anywhere");
    let err = GpuContext::new().err().map(|e| e.to_string());
    // The bar at 0: `Auto` asks for an adapter even for this small plan.
    let fuser = Fuser::new(Backend::Auto).auto_gpu_min_source_bytes(0);
    let (g, w) = small_model();
    let fused = fuser.fuse(&g, &w, &FuseOptions::default());
    let gpu_only = Fuser::new(Backend::Gpu).fuse(&g, &w, &FuseOptions::default()).err().map(|e| e.to_string());
    match before {
        Some(v) => std::env::set_var("WGPU_ADAPTER_NAME", v),
        None => std::env::remove_var("WGPU_ADAPTER_NAME"),
    }
    let err = err.expect("no adapter matches");
    assert!(err.contains("no GPU adapter") && err.contains("no-such-adapter-anywhere"), "{}", err);
    let fused = fused.unwrap();
    assert_eq!(fused.backend, Backend::Cpu);
    assert!(fused.backend_reason.contains("no GPU adapter"), "{}", fused.backend_reason);
    assert!(gpu_only.unwrap().contains("no GPU adapter"));
}

#[test]
fn gpu_every_kernel_builds_its_pipeline() {
    // Each kernel's WGSL compiles on the adapter with the binding layout the Rust side
    // declares for it (a mismatch is a validation error, recorded and returned).
    let ctx = common::gpu();
    for id in repfuse::gpu::shaders::KernelId::ALL {
        ctx.kernel(id).unwrap_or_else(|e| panic!("{:?}: {}", id, e));
    }
    ctx.take_error().unwrap();
}

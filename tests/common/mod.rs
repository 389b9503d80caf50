//! Shared test helpers: the GPU context (or a loud skip), and small model builders.
#![allow(dead_code)]

use std::sync::OnceLock;

use repfuse::gpu::GpuContext;

/// The process-wide GPU context, or None (with a loud message) when no adapter
/// exists. With REPFUSE_REQUIRE_GPU=1 a missing adapter fails the test instead.
pub fn gpu() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::new() {
        Ok(c) => {
            eprintln!("GPU adapter: {} ({:?}, {:?})", c.info.name, c.info.backend, c.info.device_type);
            Some(c)
        }
        Err(e) => {
            if std::env::var("REPFUSE_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("REPFUSE_REQUIRE_GPU=1 but no GPU adapter: {}", e);
            }
            eprintln!("\n!!!!!!!! SKIPPING GPU TEST: no adapter ({}). Install mesa-vulkan-drivers for lavapipe. !!!!!!!!\n", e);
            None
        }
    })
    .as_ref()
}

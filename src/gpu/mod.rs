//! The GPU engine: WGSL kernels through wgpu for the weight primitives (batched over
//! whole plans) and the verification forward pass.

mod context;
mod forward;
mod plan_exec;
pub mod records;
pub mod shaders;
mod split;

pub use context::{grid, ConvKernel, GpuContext, POLL_TIMEOUT};
pub use forward::{act_code, forward_gpu, ConvParams, ElementwiseParams, GpuStep, GpuValue, LinearParams, PoolParams};
pub use plan_exec::{execute_plan_gpu, execute_plan_gpu_bounded, execute_plan_gpu_timed, GpuTiming, KernelTime};
pub use shaders::{KernelId, PlaceShape};

//! The CPU reference: the weight primitives, a FusionPlan executor and a forward pass
//! of any graph of known ops (f32 tensors, f64 accumulation).

mod conv;
mod error_scale;
mod forward;
mod out_buffer;
pub mod plan_exec;
pub mod primitives;

pub use conv::conv2d;
pub use error_scale::{sq, zip, ErrorScaleArgs};
pub use forward::{forward, forward_with_error_scale};
pub use plan_exec::{execute_plan, execute_plan_releasing};

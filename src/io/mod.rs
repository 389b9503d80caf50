//! Model files: ONNX (as PyTorch exports it) and the native format (safetensors
//! weights plus a JSON graph). Every write is atomic: a temp file in the target
//! folder, then a rename, so a failure never leaves a half-written model.

mod atomic;
pub mod native;
pub mod onnx;

pub use atomic::write_atomic;

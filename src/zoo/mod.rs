//! Training-form model builders with random weights at real sizes.

pub mod blocks;
pub mod builder;
mod models;

pub use builder::{ConvSpec, GraphBuilder};
pub use models::{build, ZooModel, MODELS};

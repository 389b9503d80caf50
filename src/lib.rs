//! repfuse: structural re-parameterization of ConvNets.
//!
//! A training-form network (multi-branch blocks of conv+BN, 1x1/KxK/asymmetric
//! branches, identity and BN branches, avg-pool branches, 1x1->KxK sequences, FC
//! layers) is rewritten into a deploy form of plain convs computing the same function.
//! The rewrite engine ([`mod@fuse`]) finds every exact pattern in any graph and refuses,
//! with a reason, what would not be exact. The weight arithmetic is a [`FusionPlan`]
//! executed by the CPU reference ([`cpu`]) or the GPU engine.

//!
//! The library an application embeds is [`Fuser`] (fuse, verify, write), [`Graph`],
//! [`Weights`], [`FusionReport`], [`io`], [`verify`] and [`Error`]; the command, its
//! benchmarks and the synthetic model zoo are behind the default feature `tools`.

#![warn(missing_docs)]

pub mod arena;
#[cfg(feature = "tools")]
pub mod bench;
#[cfg(feature = "tools")]
pub mod cli;
pub mod cpu;
pub mod error;
pub mod fuse;
pub mod fuser;
pub mod gpu;
pub mod graph;
pub mod io;
pub mod ops;
pub mod pipeline;
pub mod plan;
pub mod tensor;
pub mod verify;
pub mod weights;
#[cfg(feature = "tools")]
pub mod zoo;

pub use error::{Error, Result};
pub use fuse::{fuse, FuseOptions, Fusion, FusionReport};
pub use fuser::{Backend, Fused, Fuser};
pub use graph::Graph;
pub use plan::FusionPlan;
pub use tensor::Tensor;
pub use weights::Weights;

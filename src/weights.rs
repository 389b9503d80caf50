//! Named parameter tensors, kept apart from the graph so the rewrite engine can plan
//! symbolically and the plan can run on either executor.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Parameter tensors by name, as ops in a [`crate::Graph`] reference them.
#[derive(Clone, Debug, Default)]
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
}

impl Weights {
    /// No tensors.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds or replaces the tensor `name`.
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.tensors.insert(name.into(), t);
    }
    /// Drops the tensor `name`, returning it if it was held.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }
    /// The tensor `name`; `Error::Tensor` when it is missing.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| Error::tensor(name, "missing from the weights"))
    }
    /// Whether a tensor `name` is held.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    /// All tensors, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.tensors.iter()
    }
    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    /// No tensors held.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
    /// Total bytes of f32 data held.
    pub fn bytes(&self) -> usize {
        self.tensors.values().map(|t| t.numel() * 4).sum()
    }
}

//! A dense f32 tensor with shared, immutable storage.
//!
//! Storage is an `Arc` of either a `Vec<f32>` (wrapping a computed Vec costs no
//! copy) or a slice of an `Arena` (a model's weights read in one huge-page mapping):
//! cloning a tensor never copies data and nothing can write
//! through a shared tensor, so "fusion never mutates its inputs" holds by construction
//! (the seed code's `branch_add` destroyed a branch by adding into it in place).

use std::sync::Arc;

use crate::arena::{Arena, ArenaSlice};
use crate::error::{Error, Result};

/// Where a tensor's values live.
enum Storage {
    Owned(Vec<f32>),
    InArena(ArenaSlice),
}

impl Storage {
    fn floats(&self) -> &[f32] {
        match self {
            Storage::Owned(v) => v,
            Storage::InArena(s) => s.floats(),
        }
    }
}

/// A dense row-major f32 tensor; clones share storage.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Arc<Storage>,
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Tensor) -> bool {
        self.shape == other.shape && self.data() == other.data()
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor").field("shape", &self.shape).field("data", &self.data()).finish()
    }
}

impl Tensor {
    /// Builds a tensor, checking that `data` fills `shape` exactly.
    pub fn new(name: &str, shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n = checked_numel(&shape).ok_or_else(|| Error::tensor(name, "element count overflows"))?;
        if n != data.len() {
            return Err(Error::tensor(name, format!("shape {:?} needs {} values, got {}", shape, n, data.len())));
        }
        Ok(Tensor { shape, data: Arc::new(Storage::Owned(data)) })
    }

    /// A 2-D tensor `[r, c]` as `[c, r]` (a Linear weight as MatMul reads it, or back);
    /// `None` for any other rank.
    pub(crate) fn transposed_2d(&self) -> Option<Tensor> {
        let [r, c] = <[usize; 2]>::try_from(self.shape()).ok()?;
        Some(Tensor::from_parts(vec![c, r], self.transposed_2d_values(0..c * r)?.collect()))
    }

    /// Values `range` (flat indices of the `[c, r]` result) of a 2-D tensor `[r, c]`
    /// transposed, without building the rest; `None` for any other rank.
    pub(crate) fn transposed_2d_values(&self, range: std::ops::Range<usize>) -> Option<impl Iterator<Item = f32> + '_> {
        let [r, c] = <[usize; 2]>::try_from(self.shape()).ok()?;
        let d = self.data();
        Some(range.map(move |k| d[(k % r) * c + k / r]))
    }

    /// Builds a tensor from data already known to match the shape (internal callers).
    pub(crate) fn from_parts(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data: Arc::new(Storage::Owned(data)) }
    }

    /// The tensor of `shape` whose values are `arena[start..start + numel]`; the
    /// caller makes it the only tensor over that range (clones aside), since the
    /// range's pages are given back when its last clone goes.
    pub(crate) fn in_arena(arena: &Arc<Arena>, start: usize, shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor { shape, data: Arc::new(Storage::InArena(ArenaSlice::new(arena, start, n))) }
    }

    /// A tensor of `shape` filled with 0.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self::from_parts(shape, vec![0.0; n])
    }

    /// Dimensions, outermost first (NCHW for feature maps, OIHW for kernels).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Elements in row-major order.
    pub fn data(&self) -> &[f32] {
        self.data.floats()
    }
    /// Element count, the product of the shape.
    pub fn numel(&self) -> usize {
        self.data().len()
    }

    /// True when two tensors share the same storage (used to prove no copy was made).
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.data, &other.data)
    }

    /// Same data, another shape with the same element count: the free reshape
    /// between a Linear weight `[O, I]` and a 1x1 kernel `[O, I, 1, 1]`.
    pub fn reshaped(&self, shape: Vec<usize>) -> Option<Tensor> {
        (shape.iter().product::<usize>() == self.numel()).then(|| Tensor { shape, data: self.data.clone() })
    }

    /// First non-finite value, if any, as (flat index, value).
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        self.data().iter().enumerate().find(|(_, v)| !v.is_finite()).map(|(i, v)| (i, *v))
    }
}

/// Element count of a shape, or None when it overflows `usize` (caught before any
/// allocation so a hostile file cannot make us allocate petabytes).
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

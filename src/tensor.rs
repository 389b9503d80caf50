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

/// A dense row-major f32 tensor; clones share storage. Its values are `len` floats
/// of the storage from `start`: a whole storage, or a run of rows of another tensor
/// ([`Tensor::row_view`]), which costs no copy.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Arc<Storage>,
    start: usize,
    len: usize,
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
        Ok(Tensor::whole(shape, Storage::Owned(data)))
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
        Tensor::whole(shape, Storage::Owned(data))
    }

    /// The tensor of `shape` over all of `storage` (the one place a window starts).
    fn whole(shape: Vec<usize>, storage: Storage) -> Self {
        let len = storage.floats().len();
        Tensor { shape, data: Arc::new(storage), start: 0, len }
    }

    /// The tensor of `shape` whose values are `arena[start..start + numel]`; the
    /// caller makes it the only tensor over that range (clones aside), since the
    /// range's pages are given back when its last clone goes.
    pub(crate) fn in_arena(arena: &Arc<Arena>, start: usize, shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor::whole(shape, Storage::InArena(ArenaSlice::new(arena, start, n)))
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
        &self.data.floats()[self.start..self.start + self.len]
    }
    /// Element count, the product of the shape.
    pub fn numel(&self) -> usize {
        self.len
    }

    /// Rows `range` of the first axis as a tensor over the same storage (no copy:
    /// the GPU plan cuts a merge too large for one storage binding into row ranges,
    /// and a copy of each source's rows held a second copy of the model's weights on
    /// the host); `None` for a rank-0 tensor or a range past the last row.
    pub(crate) fn row_view(&self, range: std::ops::Range<usize>) -> Option<Tensor> {
        let rows = *self.shape.first()?;
        if range.start > range.end || range.end > rows {
            return None;
        }
        let row = self.len / rows.max(1);
        let mut shape = self.shape.clone();
        shape[0] = range.len();
        Some(Tensor { shape, data: self.data.clone(), start: self.start + range.start * row, len: range.len() * row })
    }

    /// True when two tensors share the same storage (used to prove no copy was made).
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.data, &other.data)
    }

    /// Same data, another shape with the same element count: the free reshape
    /// between a Linear weight `[O, I]` and a 1x1 kernel `[O, I, 1, 1]`.
    pub fn reshaped(&self, shape: Vec<usize>) -> Option<Tensor> {
        (shape.iter().product::<usize>() == self.numel()).then(|| Tensor { shape, data: self.data.clone(), start: self.start, len: self.len })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `[4, 3]` holding 0..12.
    fn four_rows() -> Tensor {
        Tensor::new("t", vec![4, 3], (0..12).map(|v| v as f32).collect()).unwrap()
    }

    #[test]
    fn a_row_view_holds_those_rows_over_the_same_storage() {
        let t = four_rows();
        let v = t.row_view(1..3).unwrap();
        assert_eq!(v.shape(), &[2, 3]);
        assert_eq!(v.data(), &t.data()[3..9]);
        assert_eq!(v.numel(), 6);
        assert!(v.shares_storage(&t));
        // A view of a view counts rows from its own first row.
        let w = v.row_view(1..2).unwrap();
        assert_eq!(w.data(), &t.data()[6..9]);
        // A reshape keeps the view's window.
        assert_eq!(w.reshaped(vec![3, 1]).unwrap().data(), &t.data()[6..9]);
        assert_eq!(t.row_view(4..4).unwrap().numel(), 0);
    }

    #[test]
    fn a_row_view_past_the_last_row_is_none() {
        let t = four_rows();
        assert!(t.row_view(3..5).is_none());
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 3..1;
        assert!(t.row_view(backwards).is_none());
        assert!(Tensor::new("s", vec![], vec![1.0]).unwrap().row_view(0..1).is_none());
    }
}

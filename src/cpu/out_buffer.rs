//! Output buffers for the weight primitives, written once without zeroing first.
//!
//! A fused model's weights are fresh memory: zero-filling a kernel (a `memset` pass
//! over every byte) only to overwrite it is a tenth of RepVGG-A0's CPU plan.
//! `fill_rows` skips the zeroing: every element is written exactly once by the
//! caller's row function. (Transparent huge pages for these buffers were tried: on
//! this VM they raised the page-fault count and gave no measurable gain.)

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// A vector of `rows * row` values where `fill(scratch, r, dst)` writes row `r`
/// (every element of `dst`, also when it reports a failure by other means); rows are
/// filled in parallel, each worker with its own scratch from `init`.
pub fn fill_rows<T>(
    rows: usize,
    row: usize,
    init: impl Fn() -> T + Sync + Send,
    fill: impl Fn(&mut T, usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let n = rows * row;
    let mut out: Vec<f32> = Vec::with_capacity(n);
    if row > 0 {
        out.spare_capacity_mut()[..n].par_chunks_mut(row).enumerate().for_each_init(init, |t, (r, dst)| fill(t, r, dst));
    }
    // SAFETY: the first `n` elements were each written by `fill` (its contract: every
    // element of its row), and `n` is within the capacity reserved above.
    unsafe { out.set_len(n) };
    out
}

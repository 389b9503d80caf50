//! Output buffers for the weight primitives, written once without zeroing first.
//!
//! A fused model's weights are fresh memory: zero-filling a kernel (a `memset` pass
//! over every byte) only to overwrite it is a tenth of RepVGG-A0's CPU plan.
//! `fill_rows_into` skips the zeroing: every element is written exactly once by the
//! caller's row function, into a fresh `Vec`'s spare capacity or an arena slice
//! (`crate::arena`, where the plan executor puts each level's place kernels so that
//! they are faulted in as huge pages).

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Fills `dst` row by row: `fill(scratch, r, row_r)` writes every element of row
/// `r` (also when it reports a failure by other means); rows are filled in
/// parallel, each worker with its own scratch from `init`.
pub fn fill_rows_into<T>(
    dst: &mut [MaybeUninit<f32>],
    row: usize,
    init: impl Fn() -> T + Sync + Send,
    fill: impl Fn(&mut T, usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) {
    if row > 0 {
        dst.par_chunks_mut(row).enumerate().for_each_init(init, |t, (r, d)| fill(t, r, d));
    }
}

/// `dst` (an arena slice) as slots to write.
pub fn as_slots(dst: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: same layout; the writers only ever store initialised f32 values, so
    // `dst` stays initialised.
    unsafe { &mut *(dst as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

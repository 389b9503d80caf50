//! The allocator of repfuse's own programs (the command, its examples and criterion
//! benchmarks): small blocks from mimalloc, large ones from the system allocator.
//!
//! The rewrite makes and drops tens of small strings and vectors per graph node; glibc
//! spent 35% (800 nodes) to 58% (80,000 nodes) of it in malloc, free and the
//! consolidation of its fastbins, which walks freed chunks scattered over the heap.
//! mimalloc's per-size free lists cut MobileOne-S0's rewrite from 1.8 to 1.25 ms and
//! a 10,000-block chain's from 1.5 s to 0.6-0.7 s. Weight tensors and file buffers are
//! another matter: glibc maps each large block on its own and unmaps it on free, so a
//! tensor freed during the plan leaves the process at once, while mimalloc keeps freed
//! memory for reuse; with mimalloc for everything the command's peak RSS rose from 1.9x
//! to 3.2x the model file. So each allocation goes to one allocator by its size, which
//! `dealloc` and `realloc` see again in their layout: a block is always freed where it
//! was made. mimalloc is built without its transparent-huge-page advice (`no_thp`):
//! with it, each 2 MiB region it touched became resident whole (peak RSS 2.2x).
//!
//! The library sets no global allocator; an application embedding it keeps its own.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks of at least this many bytes go to the system allocator: glibc maps blocks
/// this large on their own by default (its initial `M_MMAP_THRESHOLD`), and the IR's
/// strings and vectors are far smaller.
const LARGE: usize = 128 * 1024;

/// mimalloc below [`LARGE`] bytes, the system allocator from there (see the module).
pub struct SplitAllocator;

fn is_large(size: usize) -> bool {
    size >= LARGE
}

// SAFETY: each method forwards to the allocator that `layout.size()` selects, and a
// block's size is the same when it is freed or resized as when it was allocated, so
// every block returns to the allocator that made it; `realloc` across the threshold
// moves the block through a fresh allocation of the other one.
unsafe impl GlobalAlloc for SplitAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size()) {
            System.alloc(layout)
        } else {
            mimalloc::MiMalloc.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size()) {
            System.alloc_zeroed(layout)
        } else {
            mimalloc::MiMalloc.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(layout.size()) {
            System.dealloc(ptr, layout)
        } else {
            mimalloc::MiMalloc.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (is_large(layout.size()), is_large(new_size)) {
            (true, true) => System.realloc(ptr, layout, new_size),
            (false, false) => mimalloc::MiMalloc.realloc(ptr, layout, new_size),
            _ => {
                // SAFETY: the caller guarantees `new_size` with `layout`'s alignment is a
                // valid layout (GlobalAlloc::realloc's contract).
                let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                let new = self.alloc(new_layout);
                if !new.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks grown and shrunk across the threshold keep their bytes and are freed by
    /// the allocator that made them (a mismatch crashes or corrupts the heap here).
    #[test]
    fn blocks_cross_the_threshold_both_ways_intact() {
        let a = SplitAllocator;
        unsafe {
            let small = Layout::from_size_align(LARGE - 8, 16).unwrap();
            let p = a.alloc(small);
            assert!(!p.is_null());
            for i in 0..small.size() {
                *p.add(i) = (i % 251) as u8;
            }
            let big = a.realloc(p, small, 2 * LARGE);
            assert!(!big.is_null());
            assert!((0..small.size()).all(|i| *big.add(i) == (i % 251) as u8));
            let big_layout = Layout::from_size_align(2 * LARGE, 16).unwrap();
            let back = a.realloc(big, big_layout, 100);
            assert!(!back.is_null());
            assert!((0..100).all(|i| *back.add(i) == (i % 251) as u8));
            a.dealloc(back, Layout::from_size_align(100, 16).unwrap());
            let z = a.alloc_zeroed(big_layout);
            assert!((0..big_layout.size()).all(|i| *z.add(i) == 0));
            a.dealloc(z, big_layout);
        }
    }
}

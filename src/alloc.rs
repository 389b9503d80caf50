//! The allocator of repfuse's own programs (the `repfuse` binary, the
//! `rewrite_time` example and the criterion benches, each of which includes this file
//! with `#[path]`): small blocks from mimalloc, large ones from the system allocator.
//! It is not a module of the library, so the library never references mimalloc: an
//! application embedding repfuse, or the Python module (whose `repfuse` console
//! command runs inside Python, on Python's allocator), keeps its own allocator.
//!
//! The rewrite makes and drops tens of small strings and vectors per graph node; glibc
//! spent from a third to over half of it in malloc, free and the consolidation of its
//! fastbins, which walks freed chunks scattered over the heap (45% of the samples on
//! an 80,000-node chain: `_int_malloc` 15%, `malloc_consolidate` 12%, `unlink_chunk`
//! 10%, `free` and `_int_free` 7%). mimalloc's per-size free lists cut MobileOne-S0's
//! rewrite from 1.8 to 1.25 ms and that chain's from 1.5 s to 0.6-0.7 s. Large blocks
//! (weight tensors, file buffers) are another matter: glibc gives them back to the
//! kernel on free (a mapping of their own, or heap top it trims), so a tensor freed
//! during the plan leaves the process, while mimalloc keeps freed memory for reuse;
//! with mimalloc for everything the command's peak RSS rose from 1.9x to 3.2x the
//! model file. So each allocation goes to one allocator by its size, which `dealloc`
//! and `realloc` see again in their layout: a block is always freed where it was made.
//! mimalloc is built without its transparent-huge-page advice (`no_thp`): with it,
//! each 2 MiB region it touched became resident whole (peak RSS 2.2-2.7x).

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks of at least this many bytes go to the system allocator: glibc's initial
/// threshold for giving a block a mapping of its own (`M_MMAP_THRESHOLD`), far above
/// the IR's strings and vectors. Splits at 1, 4 and 16 KiB timed the same and gave
/// no lower peak RSS.
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

    /// mimalloc made the block at `p` (its heap regions hold it).
    fn from_mimalloc(p: *mut u8) -> bool {
        unsafe { libmimalloc_sys::mi_is_in_heap_region(p as *const _) }
    }

    fn fill(p: *mut u8, n: usize) {
        (0..n).for_each(|i| unsafe { *p.add(i) = (i % 251) as u8 });
    }

    fn intact(p: *const u8, n: usize) -> bool {
        (0..n).all(|i| unsafe { *p.add(i) } == (i % 251) as u8)
    }

    /// Each size and alignment goes to the allocator its size names, on both sides of
    /// the threshold, zeroed when asked; a wrong routing fails the ownership check.
    #[test]
    fn blocks_go_to_the_allocator_their_size_names() {
        let a = SplitAllocator;
        for (size, align) in [(24, 8), (LARGE - 1, 16), (LARGE, 16), (64, 4096), (200 * 1024, 4096), (3 * LARGE, 64)] {
            let layout = Layout::from_size_align(size, align).unwrap();
            for zeroed in [false, true] {
                let p = unsafe {
                    if zeroed {
                        a.alloc_zeroed(layout)
                    } else {
                        a.alloc(layout)
                    }
                };
                assert!(!p.is_null(), "{:?}", layout);
                assert_eq!(p as usize % align, 0, "{:?}", layout);
                assert_eq!(from_mimalloc(p), size < LARGE, "{:?}", layout);
                if zeroed {
                    assert!((0..size).all(|i| unsafe { *p.add(i) } == 0), "{:?} not zeroed", layout);
                }
                fill(p, size);
                assert!(intact(p, size));
                unsafe { a.dealloc(p, layout) };
            }
        }
    }

    /// Blocks resized within one side and across the threshold, both ways, keep their
    /// bytes and end in the allocator of their new size.
    #[test]
    fn resized_blocks_keep_their_bytes_and_move_allocator_at_the_threshold() {
        let a = SplitAllocator;
        let mut size = 100;
        let mut p = unsafe { a.alloc(Layout::from_size_align(size, 16).unwrap()) };
        assert!(!p.is_null());
        fill(p, size);
        for new in [1000, LARGE - 8, 2 * LARGE, 4 * LARGE, LARGE - 1, 50] {
            let q = unsafe { a.realloc(p, Layout::from_size_align(size, 16).unwrap(), new) };
            assert!(!q.is_null(), "{} -> {}", size, new);
            assert!(intact(q, size.min(new)), "{} -> {} lost bytes", size, new);
            assert_eq!(from_mimalloc(q), new < LARGE, "{} -> {}", size, new);
            fill(q, new);
            (p, size) = (q, new);
        }
        unsafe { a.dealloc(p, Layout::from_size_align(size, 16).unwrap()) };
    }
}

//! Many tensors' values in one anonymous mapping, asking the kernel for huge pages.
//!
//! A model's weights are fresh memory, and on Linux every 4 KiB page of it costs a
//! page fault when first written: for RepVGG-A0's 36 MB that is ~9,000 faults and
//! about half of reading the file. An arena is one mapping with MADV_HUGEPAGE, so a
//! fault maps 2 MiB (measured here: 36 MB first-touched in 15-17 ms as 4 KiB pages,
//! 2.7-3.1 ms as huge pages). Each tensor is a slice of it (`tensor::Tensor` views
//! it); when the last clone of a tensor goes, the pages wholly inside its slice are
//! given back (MADV_DONTNEED), so releasing a weight still lowers resident memory.
//!
//! The mappings of the last dropped output arenas (`Pages::Keep`) are kept (four at
//! most, 256 MiB in all) for the next arena of about its size: a process that fuses
//! again (a benchmark loop, a server, `--verify`) then writes into memory already
//! mapped instead of faulting it in again.
//! Kernel outputs (`Pages::Keep`) leave their pages mapped when their tensor goes, so
//! they can be reused; read weights (`Pages::GiveBack`) return them.

use std::sync::{Arc, Mutex};

/// Values are placed at multiples of this many f32 (one 64-byte cache line).
const ALIGN: usize = 16;
const PAGE: usize = 4096;
/// The smallest range worth giving back on its own.
const MIN_RELEASE_BYTES: usize = 256 << 10;
/// The smallest arena worth a mapping of its own: two huge pages.
const MIN_BYTES: usize = 4 << 20;

/// What happens to a slice's pages when its tensor goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pages {
    /// Returned to the kernel (MADV_DONTNEED): resident memory falls as tensors are
    /// released (the read weights, which the releasing executor drops as it goes).
    GiveBack,
    /// Left mapped, so the arena's mapping can be reused whole (kernel outputs,
    /// which live until the model is written).
    Keep,
}

/// A read-only block of f32 values that tensors view (see the module doc).
pub struct Arena {
    /// `Some` until the arena is dropped (an output arena's mapping then goes to
    /// `SPARE`; a given-back one is unmapped).
    map: Option<memmap2::MmapMut>,
    pages: Pages,
    /// Ranges of dropped slices, merged (see `release`).
    freed: Mutex<Vec<Freed>>,
}

/// A run of neighbouring dropped slices, in f32: `[start, end)`, and how many bytes
/// of the pages wholly inside it have been given back.
#[derive(Clone, Copy, Debug)]
struct Freed {
    start: usize,
    end: usize,
    given: usize,
}

/// Mappings of dropped arenas, for reuse (see the module doc).
static SPARE: Mutex<Vec<memmap2::MmapMut>> = Mutex::new(Vec::new());
const SPARE_MAPS: usize = 4;
const SPARE_BYTES: usize = 256 << 20;

/// A spare mapping of at least `bytes` and at most twice that, if one is kept.
fn take_spare(bytes: usize) -> Option<memmap2::MmapMut> {
    let mut spare = SPARE.lock().ok()?;
    let i = spare.iter().position(|m| m.len() >= bytes && m.len() <= bytes.saturating_mul(2))?;
    Some(spare.swap_remove(i))
}

impl Drop for Arena {
    fn drop(&mut self) {
        let Some(map) = self.map.take() else { return };
        // A mapping whose pages were given back in pieces is not worth keeping: each
        // partial give-back split a huge page into 4 KiB ones, and the kernel keeps
        // the split page tables, so refilling it faults per 4 KiB page (a read into a
        // reused one took 14-18 ms against 10 ms for a fresh mapping, RepVGG-A0).
        // Unmapped, it leaves nothing behind; a new mapping gets huge pages again.
        if self.pages == Pages::GiveBack {
            return;
        }
        if let Ok(mut spare) = SPARE.lock() {
            // The most recently dropped are kept: the next plan most likely repeats
            // the last one's sizes (older spares of another model would block them).
            spare.push(map);
            while spare.len() > SPARE_MAPS || spare.iter().map(|m| m.len()).sum::<usize>() > SPARE_BYTES {
                spare.remove(0);
            }
        }
    }
}

impl Arena {
    /// Lays out slices of `lens` values (`None`: no slice) in one mapping (a spare
    /// one, or new) and returns their start offsets with the slices to fill, or
    /// `None` when there is nothing to place or the mapping fails (callers then
    /// allocate per tensor). The slices are not zeroed: their filler writes every
    /// value.
    pub fn layout(lens: &[Option<usize>], pages: Pages) -> Option<(ArenaFill, Vec<Option<usize>>)> {
        let mut starts = Vec::with_capacity(lens.len());
        let mut total = 0usize;
        for len in lens {
            match len {
                Some(n) => {
                    starts.push(Some(total));
                    // Sizes a caller could not allocate either: no arena (the caller's
                    // own allocation then reports it).
                    total = total.checked_add(*n)?.checked_next_multiple_of(ALIGN)?;
                }
                None => starts.push(None),
            }
        }
        let bytes = total.checked_mul(4)?;
        // Below a few huge pages a mapping of its own gains nothing over the heap
        // (which reuses freed memory without a system call).
        if bytes < MIN_BYTES {
            return None;
        }
        let map = match take_spare(bytes) {
            Some(m) => m,
            None => {
                let map = memmap2::MmapMut::map_anon(bytes).ok()?;
                // Only advice: where transparent huge pages are off nothing changes.
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                map
            }
        };
        Some((ArenaFill { map, pages }, starts))
    }
}

/// Values written once, in parallel, into one arena: each item's result, and the
/// arena with each item's start (`None` where the item had no slice).
pub struct Filled<R> {
    /// What each item's filler returned, in item order.
    pub results: Vec<R>,
    /// The filled arena.
    pub arena: Arc<Arena>,
    /// Where each item's slice starts (f32 offset), as `Arena::layout` placed it.
    pub starts: Vec<Option<usize>>,
}

impl Arena {
    /// Lays out one arena for `lens` (see `layout`) and runs `fill(i, slice)` for
    /// every item on every core, `slice` being item i's own values to write (`None`
    /// where `lens[i]` is `None`). `None` when no arena is made (too small, or the
    /// mapping failed): the caller then allocates per tensor.
    pub fn fill_parallel<R: Send>(lens: &[Option<usize>], pages: Pages, fill: impl Fn(usize, Option<&mut [f32]>) -> R + Sync) -> Option<Filled<R>> {
        use rayon::prelude::*;
        let (mut arena_fill, starts) = Arena::layout(lens, pages)?;
        let results = {
            let slots = arena_fill.slices(&starts, lens);
            slots.into_par_iter().enumerate().map(|(i, slot)| fill(i, slot)).collect()
        };
        Some(Filled { results, arena: arena_fill.finish(), starts })
    }
}

/// An arena being filled: the one time its values are written.
pub struct ArenaFill {
    map: memmap2::MmapMut,
    pages: Pages,
}

impl ArenaFill {
    /// Disjoint mutable slices `[start, start + len)` for each `Some` entry, in order
    /// (starts as `Arena::layout` gave them, lens as passed to it).
    pub fn slices<'a>(&'a mut self, starts: &[Option<usize>], lens: &[Option<usize>]) -> Vec<Option<&'a mut [f32]>> {
        let mut rest: &mut [f32] = bytemuck::cast_slice_mut(&mut self.map[..]);
        let mut at = 0;
        let mut out = Vec::with_capacity(starts.len());
        for (start, len) in starts.iter().zip(lens) {
            match (start, len) {
                (Some(s), Some(n)) => {
                    let tail = std::mem::take(&mut rest);
                    let (_, from) = tail.split_at_mut(s - at);
                    let (mine, after) = from.split_at_mut(*n);
                    rest = after;
                    at = s + n;
                    out.push(Some(mine));
                }
                _ => out.push(None),
            }
        }
        out
    }

    /// The filled arena, shared by the tensors that view it.
    pub fn finish(self) -> Arc<Arena> {
        Arc::new(Arena { map: Some(self.map), pages: self.pages, freed: Mutex::new(vec![]) })
    }
}

impl Arena {
    fn map(&self) -> &memmap2::MmapMut {
        self.map.as_ref().expect("an arena's mapping is only taken when it is dropped")
    }

    /// Number of f32 values it holds.
    fn len(&self) -> usize {
        self.map().len() / 4
    }

    /// Marks `[start, start + len)` (in f32) free and gives back the pages wholly
    /// inside the run of free slices it joins, once that run has at least
    /// `MIN_RELEASE_BYTES` of them not yet given back. Slices are freed one by one
    /// and most are smaller than a release is worth (MobileOne-S0's 256x256 1x1
    /// kernels are 256 KiB, so fewer whole pages), but neighbours in the file go
    /// together: merged, they give their pages back in a few calls.
    ///
    /// # Safety
    /// No reference into that range may be used afterwards: its pages read as zeros
    /// from now on. `ArenaSlice`'s drop calls it for the slice it alone viewed.
    unsafe fn release(&self, start: usize, len: usize) {
        if self.pages == Pages::Keep || len == 0 {
            return;
        }
        let Ok(mut freed) = self.freed.lock() else { return };
        // Slices sit at multiples of ALIGN: two free runs less than ALIGN apart have
        // only padding between them (a live slice would start in the gap, and then
        // reach at least to the next multiple).
        let at = freed.partition_point(|f| f.end + ALIGN <= start);
        let mut run = Freed { start, end: start + len, given: 0 };
        let mut merged = at;
        while merged < freed.len() && freed[merged].start < run.end + ALIGN {
            let f = freed[merged];
            // Interiors of disjoint runs are disjoint pages, all inside the merged
            // run's interior: what they gave back adds up.
            run = Freed { start: run.start.min(f.start), end: run.end.max(f.end), given: run.given + f.given };
            merged += 1;
        }
        let (from, to) = ((run.start * 4).next_multiple_of(PAGE), (run.end * 4) / PAGE * PAGE);
        // Each release is a system call and a TLB shoot-down on every core running
        // the process: only worth it for a sizeable range. The call covers the whole
        // interior: pages given back before cost the kernel only a page-table walk.
        if to >= from + run.given + MIN_RELEASE_BYTES {
            // SAFETY: the caller's contract for this slice; the rest of the run is
            // slices dropped before, whose callers gave the same promise.
            let _ = unsafe { self.map().unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from) };
            run.given = to - from;
        }
        freed.splice(at..merged, [run]);
    }
}

/// One tensor's slice of an arena; its pages go back when it is dropped.
pub struct ArenaSlice {
    arena: Arc<Arena>,
    start: usize,
    len: usize,
}

impl ArenaSlice {
    /// The slice `[start, start + len)` of `arena`; the caller makes it the only
    /// view of that range (`Arena::layout` never overlaps two).
    pub(crate) fn new(arena: &Arc<Arena>, start: usize, len: usize) -> Self {
        assert!(start.checked_add(len).is_some_and(|end| end <= arena.len()), "arena slice out of range");
        ArenaSlice { arena: arena.clone(), start, len }
    }

    /// Its values. Built from the slice's own range only, never through a reference
    /// to the whole mapping, which other slices' drops change (their pages).
    pub fn floats(&self) -> &[f32] {
        // SAFETY: `new` checked the range lies in the mapping (4-byte aligned: a
        // mapping is page aligned); it was filled before the arena was shared, is
        // never written again, and is only released when `self` is dropped.
        unsafe { std::slice::from_raw_parts((self.arena.map().as_ptr() as *const f32).add(self.start), self.len) }
    }
}

impl Drop for ArenaSlice {
    fn drop(&mut self) {
        // SAFETY: this slice is the one view of its range (`new`'s contract), and it
        // is going: nothing reads the range again.
        unsafe { self.arena.release(self.start, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    #[test]
    fn tensors_in_an_arena_keep_their_values_as_their_neighbours_are_released() {
        // Slices that share pages with each other: releasing one gives back only the
        // pages wholly inside it, so the others (and clones) still read their values.
        let lens = [Some(1 << 17), None, Some(3), Some(1 << 20), Some(1)];
        let (mut fill, starts) = Arena::layout(&lens, Pages::GiveBack).expect("an arena");
        for (k, slot) in fill.slices(&starts, &lens).into_iter().enumerate() {
            if let Some(s) = slot {
                s.iter_mut().enumerate().for_each(|(i, v)| *v = (k * 10_000_000 + i) as f32);
            }
        }
        let arena = fill.finish();
        let mut tensors: Vec<Option<Tensor>> =
            starts.iter().zip(&lens).map(|(s, n)| s.map(|s| Tensor::in_arena(&arena, s, vec![n.expect("a length with each start")]))).collect();
        let expect = |k: usize, t: &Option<Tensor>| {
            let t = t.as_ref().expect("a live tensor");
            assert!(t.data().iter().enumerate().all(|(i, v)| *v == (k * 10_000_000 + i) as f32), "tensor {} changed", k);
        };
        // Tensor 0 (512 KiB) is released: tensor 2 shares its last page.
        tensors[0] = None;
        for k in [2, 3, 4] {
            expect(k, &tensors[k]);
        }
        // Tensor 3 (4 MiB) has a clone: nothing is released while the clone lives.
        let kept = tensors[3].clone();
        tensors[3] = None;
        expect(3, &kept);
        expect(4, &tensors[4]);
        // The last clone goes: tensor 4 shares its first page.
        drop(kept);
        expect(4, &tensors[4]);
    }

    #[test]
    fn neighbouring_small_slices_give_their_pages_back_together() {
        // 16 slices of 64 KiB each (a quarter of MIN_RELEASE_BYTES), then one of 4
        // MiB (an arena's least): alone none of the small is worth a release,
        // dropped in turn they are.
        let small = (64 << 10) / 4;
        let mut lens = vec![Some(small); 16];
        lens.push(Some(1 << 20));
        let (mut fill, starts) = Arena::layout(&lens, Pages::GiveBack).expect("an arena");
        for slot in fill.slices(&starts, &lens).into_iter().flatten() {
            slot.fill(1.0);
        }
        let arena = fill.finish();
        let mut tensors: Vec<Option<Tensor>> = starts.iter().zip(&lens).map(|(s, n)| Some(Tensor::in_arena(&arena, s.unwrap(), vec![n.unwrap()]))).collect();
        // Given back pages read as zeros: look through the mapping itself.
        let zeros = |k: usize| -> usize {
            let all: &[f32] = bytemuck::cast_slice(&arena.map()[..]);
            all[starts[k].unwrap()..starts[k].unwrap() + lens[k].unwrap()].iter().filter(|v| **v == 0.0).count()
        };
        // Three slices (192 KiB) dropped: under the bar, nothing given back yet.
        for t in tensors.iter_mut().take(3) {
            *t = None;
        }
        assert_eq!((0..3).map(zeros).sum::<usize>(), 0);
        // The fourth joins the run: 256 KiB, given back (all whole pages, here all).
        tensors[3] = None;
        assert_eq!((0..4).map(zeros).sum::<usize>(), 4 * small);
        // Dropped out of order, the next four merge into the run once the gap closes.
        for k in [5, 6, 7] {
            tensors[k] = None;
        }
        assert_eq!((5..8).map(zeros).sum::<usize>(), 0);
        tensors[4] = None;
        assert_eq!((4..8).map(zeros).sum::<usize>(), 4 * small);
        // Live neighbours keep their values.
        assert!(tensors[8].as_ref().unwrap().data().iter().all(|v| *v == 1.0));
        assert!(tensors[16].as_ref().unwrap().data().iter().all(|v| *v == 1.0));
    }

    #[test]
    fn only_output_arenas_are_kept_for_reuse() {
        // Sizes no other test asks for (an untouched mapping costs no memory).
        let lens = [Some((20 << 20) + 12_345)];
        for (pages, kept) in [(Pages::GiveBack, false), (Pages::Keep, true)] {
            let (fill, _) = Arena::layout(&lens, pages).expect("an arena");
            let bytes = fill.map.len();
            drop(fill.finish());
            // A given-back arena's split huge pages would make the next fill fault per
            // 4 KiB page: it is unmapped instead.
            assert_eq!(take_spare(bytes).is_some(), kept, "{:?}", pages);
        }
    }

    #[test]
    fn nothing_little_or_impossible_to_place_makes_no_arena() {
        assert!(Arena::layout(&[None, Some(0)], Pages::Keep).is_none());
        assert!(Arena::layout(&[Some(1000), Some(1000)], Pages::Keep).is_none());
        assert!(Arena::layout(&[Some(usize::MAX / 2), Some(usize::MAX / 2 + 8)], Pages::Keep).is_none());
        assert!(Arena::layout(&[Some(usize::MAX / 3)], Pages::Keep).is_none());
    }
}

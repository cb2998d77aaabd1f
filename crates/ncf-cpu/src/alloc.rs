//! A global allocator that starts every buffer on a cache line.
//!
//! `Vec<f32>` only promises 4-byte alignment, and the system allocator gives 16. A buffer that
//! starts 48 bytes into a cache line spreads each 128-byte row over three lines instead of
//! two; the two-lane step reads `∂L/∂x₀`'s halves by rows of 128 bytes from the other core, so
//! a misaligned lane paid for a third more lines (one lane's `dx₀` sat at 48 bytes, the other's
//! at 0, in `ncf train` on ML-1M). [`LineAligned`] asks the system allocator for 64-byte
//! alignment on every allocation of [`MIN_SIZE`] bytes or more, and changes nothing else. The
//! `ncf` binary installs it (`#[global_allocator]`).

use std::alloc::{GlobalAlloc, Layout, System};

/// A cache line.
pub const LINE: usize = 64;

/// Allocations smaller than this keep the alignment they asked for: they are not the model's
/// buffers, and padding them would cost memory for nothing.
pub const MIN_SIZE: usize = 1024;

/// The system allocator, with buffers of [`MIN_SIZE`] bytes or more aligned to [`LINE`].
pub struct LineAligned;

/// The layout actually asked of the system allocator for `l`: the same size, aligned to a
/// line when it is large enough. A function of `l` alone, so allocation and release agree.
fn widen(l: Layout) -> Layout {
    if l.size() >= MIN_SIZE && l.align() < LINE { Layout::from_size_align(l.size(), LINE).unwrap_or(l) } else { l }
}

// SAFETY: every call is passed on to `System` with the layout `widen` gives, which keeps the
// size and only raises the alignment (to a power of two), and is the same for the allocation
// and its release; `realloc` either keeps that alignment (System's `realloc` honours the old
// layout's) or moves the block itself to a new block of the new layout's.
unsafe impl GlobalAlloc for LineAligned {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: `widen(l)` has `l`'s non-zero size (the caller's contract).
        unsafe { System.alloc(widen(l)) }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(widen(l)) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` was allocated by this allocator with `l`, so by System with `widen(l)`.
        unsafe { System.dealloc(p, widen(l)) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let old = widen(l);
        let Ok(new) = Layout::from_size_align(new_size, l.align()).map(widen) else {
            return std::ptr::null_mut();
        };
        if new.align() == old.align() {
            // SAFETY: `p` is System's block of layout `old`; the new size is non-zero and valid
            // for that alignment (checked just above).
            return unsafe { System.realloc(p, old, new_size) };
        }
        // The new size crosses MIN_SIZE: move the block to one of the new alignment.
        // SAFETY: `new` has a non-zero size; on success both blocks are live and distinct, and
        // the copy stays within the smaller of the two.
        unsafe {
            let q = System.alloc(new);
            if !q.is_null() {
                std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size));
                System.dealloc(p, old);
            }
            q
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of sizes around the threshold, grown and shrunk across it, start on a line when
    /// they are large, keep their contents through `realloc`, and free cleanly.
    #[test]
    fn large_blocks_start_on_a_line_and_survive_realloc() {
        let a = LineAligned;
        let on_line = |p: *mut u8, size: usize| size < MIN_SIZE || (p as usize).is_multiple_of(LINE);
        for size in [8usize, 100, MIN_SIZE - 1, MIN_SIZE, MIN_SIZE + 4, 1 << 20] {
            let l = Layout::from_size_align(size, 4).unwrap();
            // SAFETY: non-zero sizes; every block is written and read within its size, and
            // released once, with the layout it has at that point.
            unsafe {
                let mut p = a.alloc(l);
                assert!(!p.is_null() && on_line(p, size), "{size} bytes at {p:?}");
                for k in 0..size {
                    *p.add(k) = (k % 251) as u8;
                }
                for new_size in [size / 2 + 1, size * 3] {
                    let q = a.realloc(p, l, new_size);
                    assert!(!q.is_null() && on_line(q, new_size), "{size} -> {new_size} at {q:?}");
                    let kept = size.min(new_size);
                    assert!((0..kept).all(|k| *q.add(k) == (k % 251) as u8), "{size} -> {new_size}: contents kept");
                    // Back to `size` (layout `l`), the first `kept` bytes still there.
                    p = a.realloc(q, Layout::from_size_align(new_size, 4).unwrap(), size);
                    assert!(!p.is_null() && on_line(p, size));
                    assert!((0..kept).all(|k| *p.add(k) == (k % 251) as u8), "{new_size} -> {size}: contents kept");
                    for k in kept..size {
                        *p.add(k) = (k % 251) as u8;
                    }
                }
                a.dealloc(p, l);
                let z = a.alloc_zeroed(l);
                assert!(on_line(z, size) && (0..size).all(|k| *z.add(k) == 0));
                a.dealloc(z, l);
            }
        }
    }
}

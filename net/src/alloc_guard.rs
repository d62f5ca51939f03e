//! A global allocator that survives absurd allocation requests from decoders.
//!
//! The wire decoder (`kafka-protocol`) sizes a `Vec` from an array length read off the wire
//! before it has seen a single element. A 20-byte request claiming two billion topics would ask
//! for hundreds of gigabytes; the system allocator refuses, and Rust aborts the whole process
//! on allocation failure — one client could kill the broker. Requests above
//! [`HUGE_ALLOCATION_BYTES`] (no legitimate allocation in sluice comes near it: requests are
//! capped by `socket.request.max.bytes`) are instead served with `mmap(MAP_NORESERVE)`: address
//! space only, no memory is committed until touched, and the decoder fails on the next missing
//! element and frees it. Every other allocation goes to the system allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};

pub const HUGE_ALLOCATION_BYTES: usize = 4 << 30;

pub struct GuardedAllocator;

unsafe impl GlobalAlloc for GuardedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() < HUGE_ALLOCATION_BYTES || layout.align() > 4096 {
            // SAFETY: forwarded unchanged.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: anonymous private mapping, page aligned (≥ every alignment we serve here).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() < HUGE_ALLOCATION_BYTES || layout.align() > 4096 {
            // SAFETY: allocated by System with this layout.
            unsafe { System.dealloc(ptr, layout) };
            return;
        }
        // SAFETY: mapped by `alloc` with this size.
        unsafe {
            libc::munmap(ptr.cast(), layout.size());
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let huge = |size: usize| size >= HUGE_ALLOCATION_BYTES && layout.align() <= 4096;
        if !huge(layout.size()) && !huge(new_size) {
            // SAFETY: both sides are System allocations.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: layout is valid for the new size (same alignment, checked by the caller).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: fresh allocation, copy of the overlapping prefix, free of the old block.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

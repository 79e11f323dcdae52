//! Opening the store asks the global allocator for no large zeroed block.
//!
//! An allocator may serve such a block from memory it freed before and zero
//! it whole, making every page resident: sled's 4 MiB page-table root did so
//! under mimalloc in about a third of the server's starts (+3.8 MiB idle,
//! issue #38), its 2 MiB leaves likewise. Zeroed tables that large now come
//! from the C library's `calloc`, which maps them fresh from the OS
//! (vendor/sled): untouched until used.
//!
//! Its own test binary: it installs a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use scopegate::scope::{Catalog, SharedCatalog};
use scopegate::store::Store;

/// The largest zeroed allocation seen, from any thread.
static LARGEST_ZEROED: AtomicUsize = AtomicUsize::new(0);

struct Recording;

unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST_ZEROED.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Recording = Recording;

/// Above a few pages, a zeroed block's cost depends on the allocator's
/// history; sled's own buffers stay below this.
const LARGE: usize = 256 * 1024;

#[tokio::test]
async fn opening_the_store_takes_no_large_zeroed_block_from_the_allocator() {
    let dir = tempfile::tempdir().unwrap();
    let catalog: SharedCatalog = Arc::new(arc_swap::ArcSwap::new(Arc::new(Catalog::builtin())));
    let store = Store::open(dir.path(), catalog).unwrap();
    store.load().unwrap();
    let largest = LARGEST_ZEROED.load(Ordering::Relaxed);
    assert!(
        largest < LARGE,
        "a zeroed allocation of {largest} bytes (the limit is {LARGE})"
    );
}

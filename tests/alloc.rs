//! The allow path of the scope decision makes no heap allocation (counted by
//! a global allocator, on this thread only, after a warm-up).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use scopegate::authz::decide;
use scopegate::key::{AuthEntry, KeyTable};
use scopegate::scope::{Catalog, KeyKind};
use scopegate::token::TokenFormat;

struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|count| count.set(count.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations_during(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|count| count.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn the_allow_path_does_not_allocate() {
    let catalog = Catalog::builtin();
    let format = TokenFormat::new("SG", None).unwrap();
    let keys = KeyTable::default();
    let scopes = catalog.resolve(["mail.send", "stats.read"]).unwrap();
    let mut tokens = Vec::new();
    for _ in 0..1000 {
        let issued = format.issue();
        keys.insert(
            issued.key_id,
            Arc::new(AuthEntry::new(
                issued.secret_hash,
                scopes.clone(),
                "acme".into(),
                KeyKind::General,
                None,
            )),
        );
        tokens.push(issued.token);
    }
    let required = catalog.resolve(["mail.send"]).unwrap();
    // Warm-up: thread-local state of the map's epoch guard.
    for token in &tokens {
        assert!(decide(&keys, &format, token, None, &required).is_allowed());
    }
    let allocations = allocations_during(|| {
        for token in &tokens {
            let decision = decide(&keys, &format, token, None, &required);
            assert!(decision.is_allowed());
        }
    });
    assert_eq!(
        allocations, 0,
        "{allocations} allocations over 1000 allowed decisions"
    );

    // The counter works: a denial names the missing scopes, which allocates.
    let denied = allocations_during(|| {
        let other = catalog.resolve(["whitelabel.read"]).unwrap();
        let decision = decide(&keys, &format, &tokens[0], None, &other);
        assert!(!decision.is_allowed());
        let _names = catalog.names(&other);
    });
    assert!(denied > 0);
}

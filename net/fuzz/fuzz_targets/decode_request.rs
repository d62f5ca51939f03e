//! Coverage-guided fuzzing of everything a client's bytes reach before a handler runs: the
//! frame/header/body decoder and the record-batch validator. Run with
//! `scripts/fuzz.sh [seconds]` (CI runs a short pass).

#![no_main]

use libfuzzer_sys::fuzz_target;

// The broker's allocator, so that decoder requests for absurd capacities behave as in the
// broker (address space reserved, nothing committed) instead of tripping libFuzzer's limit.
#[global_allocator]
static ALLOCATOR: sluice_net::alloc_guard::GuardedAllocator = sluice_net::alloc_guard::GuardedAllocator;

fuzz_target!(|data: &[u8]| {
    let _ = sluice_net::connection::decode_request(bytes::Bytes::copy_from_slice(data));
    let _ = sluice_storage::batch::split_and_validate(data);
});

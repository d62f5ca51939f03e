//! sluice-perf: criterion microbenchmarks of sluice's hot paths, in `benches/`.
//!
//! `cargo bench -p sluice-perf` measures; `cargo test -p sluice-perf --benches` runs each
//! benchmark once on tiny inputs, so they cannot rot. This crate has no library code of its own.

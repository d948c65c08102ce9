//! Test support, not part of the mirror: compiled only with the cargo feature `test-support`,
//! which this crate's tests and benchmarks and the end-to-end tests (`tests/`) enable.
//!
//! - [`iproute2`]: the kernel's state as `ip -j`/`bridge -j` print it and the mirror's objects,
//!   brought to one canonical form and compared (the differential tests' oracle).
//! - [`tc`]: the same for tc (`tc -j -d`) and the mirror's tc state.
//! - [`route_writer`]: loads a namespace with many IPv4 routes fast (batched `RTM_NEWROUTE`
//!   requests, no acknowledgements).

pub mod iproute2;
pub mod route_writer;
pub mod tc;

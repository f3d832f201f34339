//! The whole-system simulation: the real `AwsBackend` driven over `sim-ec2` through generated
//! grant lifetimes, faults and crashes, with invariant checkers run after every step.
//!
//! `cargo xtask sim` is a thin command line over [`harness::run`]; the integration tests in
//! `tests/integration/` use the same harness for their properties, and
//! `examples/bench_backend.rs` measures the backend with it.

pub mod breakage;
pub mod checkers;
pub mod cloudwatch_bridge;
pub mod crashpoint;
pub mod fixture;
pub mod framestore;
pub mod gated;
pub mod harness;
mod lifecycle;
mod processes;
pub mod replicas;
pub mod scenario;
pub mod selftest;
pub mod summary;
pub mod witness;
mod world;

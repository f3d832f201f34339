//! Cross-crate integration tests, one module per concern.

mod backend_sim;
mod moto;
mod recovery;
mod scenarios;
mod selftest;

//! Cross-crate integration tests, one module per concern.

mod moto;

//! Cross-crate integration tests, one module per concern.

mod architecture;
mod backend_sim;
mod bridge;
mod deadline_and_bill;
mod differential;
mod economy;
mod every_path;
mod guest_backstop;
mod guest_security;
mod iam_policy;
mod images;
mod ledger_dynamodb;
mod ledger_dynamodb_snapshot;
mod moto;
mod placement;
mod preflight;
mod process;
mod recovery;
mod scenarios;
mod selftest;
mod standby;
mod telemetry;

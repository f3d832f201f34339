//! The AWS EC2 backend: turns a compute grant into an EC2 instance and back into nothing.
//!
//! The logic ([`AwsBackend`]) is written against the [`port::Ec2Port`] trait; the `sdk`
//! feature adds the adapter over the real AWS SDK. The simulator (`sim-ec2`) implements the same
//! port, so production and simulation run one piece of provisioning code.

mod backend;
pub mod bridge;
pub mod config;
mod ec2;
mod errors;
pub mod guest;
mod hostkey;
mod images;
mod journal;
pub mod keys;
pub(crate) mod lag;
pub mod names;
pub mod pacing;
pub mod placement;
pub mod poller;
pub mod port;
pub mod preflight;
mod refusals;
mod regions;
#[cfg(feature = "sdk")]
pub mod sdk;
pub mod sizing;
pub mod standby;
mod switches;
mod tasks;
pub mod telemetry;
mod terminations;

pub use backend::{AwsBackend, BACKEND_NAME, BackendLedger, BackendParts, DynStore};
pub use backend::{Orphan, ReapReport, RecoveryReport};
pub use config::{AwsBootConfig, ConfigError, ConfigProblem, DynamoLedger, GRANT_TAG, LedgerStore, OWNER_TAG};
pub use switches::TestSwitches;

/// This build's version: the crate's version and the git commit it was built from
/// (`0.0.0+3f2a9c1d0e4b`), or `+unknown` when built outside a git checkout. `aws-backend
/// --version` prints it; a lease holder's name should carry it, so `status` shows which build
/// holds a group's lease.
pub fn version() -> &'static str {
    concat!(env!("CARGO_PKG_VERSION"), "+", env!("AWS_BACKEND_GIT_COMMIT"))
}

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
pub use config::{AwsBootConfig, ConfigError, DynamoLedger, GRANT_TAG, LedgerStore, OWNER_TAG};
pub use switches::TestSwitches;

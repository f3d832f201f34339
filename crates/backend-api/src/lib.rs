//! The contract compute-bridge calls: the [`Backend`] trait, the domain types it speaks in,
//! the error every backend returns, an injectable [`Clock`], and a conformance suite that
//! every implementation must pass.
//!
//! This crate knows nothing of any cloud provider: it depends on no AWS crate, does no IO and
//! reads no clock except through [`Clock`].

mod almanac;
mod backend;
mod clock;
pub mod conformance;
mod error;
mod grant;
mod secret;

pub use almanac::{Almanac, AlmanacError, AlmanacTick};
pub use backend::{Backend, Capabilities, Envelope, ProvisionedInstance, RegionLabel, RegionLabelError};
pub use clock::{Clock, TokioClock};
pub use error::BackendError;
pub use grant::{ComputeGrant, ComputeManifest, GrantId, ImageHash, ParseHashError, UsageMetrics};
pub use secret::Secret;

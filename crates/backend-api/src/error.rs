//! The one error type every backend returns.

use crate::AlmanacTick;

/// Why a backend refused or failed an operation.
///
/// The [`Backend`](crate::Backend) trait returns `anyhow::Result` (the signature
/// compute-bridge already calls), so a backend returns this wrapped in `anyhow::Error`; a caller
/// recovers it with `err.downcast_ref::<BackendError>()` and asks [`BackendError::is_retryable`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The grant names a region the operator did not allow. Not retryable: route the grant to
    /// another backend or add the region to the allowlist.
    #[error(
        "region {region:?} is not in the operator's allowlist {allowed:?}: route the grant elsewhere or add the region to `regions`"
    )]
    RegionNotAllowed {
        /// The region asked for.
        region: String,
        /// The regions this backend may use.
        allowed: Vec<String>,
    },
    /// This backend can never run the grant (TDX required, larger than every instance type).
    /// Not retryable.
    #[error("grant cannot be satisfied by this backend: {reason}")]
    Unsatisfiable {
        /// What makes it impossible, naming the value.
        reason: String,
    },
    /// The grant's deadline is already past. Not retryable.
    #[error("grant deadline {valid_to} has already passed (now {now}): nothing was created")]
    DeadlinePassed {
        /// The grant's deadline.
        valid_to: AlmanacTick,
        /// The current tick.
        now: AlmanacTick,
    },
    /// The input is malformed (a field out of range, a value that cannot be rendered safely).
    /// Not retryable: fix the named field.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The offending field.
        field: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The provider has no capacity for any fitting instance type right now. Retryable later.
    #[error("no capacity in {region} for {instance_types:?}: retry later or in another region")]
    CapacityUnavailable {
        /// The region that was tried.
        region: String,
        /// Every instance type that was tried.
        instance_types: Vec<String>,
    },
    /// The provider throttled us past our retry budget. Retryable with backoff.
    #[error("{operation} throttled by the provider past the retry budget: retry with backoff")]
    Throttled {
        /// The API operation that was throttled.
        operation: String,
    },
    /// The provider returned an error. Retryable when `retryable` says so (5xx, `InternalError`,
    /// `Unavailable`); otherwise the code says what to fix.
    #[error("{operation} failed with {code}: {message}")]
    Provider {
        /// The API operation.
        operation: String,
        /// The provider's error code, e.g. `InvalidAMIID.NotFound`.
        code: String,
        /// The provider's message.
        message: String,
        /// Whether the same call may succeed later.
        retryable: bool,
    },
    /// The instance is not one this backend knows (no record in its ledger). Not retryable.
    #[error("instance {instance_id} of grant {grant} is not known to this backend")]
    UnknownInstance {
        /// The grant id in hex.
        grant: String,
        /// The instance id.
        instance_id: String,
    },
    /// The backend does not take grants right now (it is starting, standing by for another
    /// bridge of its group, or draining before it stops). Retryable: later, or elsewhere.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why, and what to do.
        reason: String,
    },
    /// Local state (the ledger, a configuration file) failed. Not retryable without operator
    /// action.
    #[error("local state: {0}")]
    Local(String),
}

impl BackendError {
    /// Whether the same call may succeed if repeated later.
    pub fn is_retryable(&self) -> bool {
        match self {
            BackendError::CapacityUnavailable { .. }
            | BackendError::Throttled { .. }
            | BackendError::Unavailable { .. } => true,
            BackendError::Provider { retryable, .. } => *retryable,
            BackendError::RegionNotAllowed { .. }
            | BackendError::Unsatisfiable { .. }
            | BackendError::DeadlinePassed { .. }
            | BackendError::InvalidInput { .. }
            | BackendError::UnknownInstance { .. }
            | BackendError::Local(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_anyhow_and_downcasts_back() {
        let original = BackendError::RegionNotAllowed { region: "mars-1".into(), allowed: vec!["us-east-1".into()] };
        let err: anyhow::Error = original.clone().into();
        let err = err.context("provisioning grant abc");
        assert_eq!(err.downcast_ref::<BackendError>(), Some(&original));
        assert!(format!("{err:#}").contains("mars-1"));
    }

    #[test]
    fn retryability_is_stated_per_variant() {
        assert!(BackendError::Throttled { operation: "RunInstances".into() }.is_retryable());
        assert!(BackendError::CapacityUnavailable { region: "r".into(), instance_types: vec![] }.is_retryable());
        assert!(!BackendError::Unsatisfiable { reason: "tdx".into() }.is_retryable());
        assert!(BackendError::Unavailable { reason: "draining".into() }.is_retryable());
        assert!(!BackendError::DeadlinePassed { valid_to: AlmanacTick(1), now: AlmanacTick(2) }.is_retryable());
        let provider = |retryable| BackendError::Provider {
            operation: "RunInstances".into(),
            code: "InternalError".into(),
            message: "m".into(),
            retryable,
        };
        assert!(provider(true).is_retryable());
        assert!(!provider(false).is_retryable());
    }
}

//! Our side of errors: EC2's errors turned into the API's (`provider`), local failures
//! (`local`), and the codes the backend makes up for calls it does not send.

use backend_api::BackendError;

use crate::port::Ec2Error;

/// The codes of errors the backend answers itself, and the EC2 codes only the backend reads
/// (EC2's and SSM's shared ones are `port::codes`).
pub(crate) mod codes {
    /// RunInstances not sent: too close to `valid_to` to launch.
    pub(crate) const TOO_LATE_TO_LAUNCH: &str = "Local.TooLateToLaunch";
    /// EC2's code for a call IAM refused.
    pub(crate) const UNAUTHORIZED_OPERATION: &str = "UnauthorizedOperation";
}

/// An EC2 error as the API reports it: throttling apart, and whether a retry may help.
pub(crate) fn provider(err: Ec2Error) -> BackendError {
    if err.is_throttle() {
        return BackendError::Throttled { operation: err.operation.name().into() };
    }
    BackendError::Provider {
        operation: err.operation.name().into(),
        retryable: err.is_transient(),
        code: err.code,
        message: err.message,
    }
}

/// A failure of our own (the ledger, a key, a label), as the API reports it.
pub(crate) fn local(err: impl std::fmt::Display) -> BackendError {
    BackendError::Local(err.to_string())
}

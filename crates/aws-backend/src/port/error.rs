//! [`Ec2Error`]: an error from EC2, CloudWatch or SSM with the service's own code, and the
//! questions the backend asks of it (throttled? transient? not found?).

use super::Operation;
use super::codes;

/// An error from EC2, with EC2's own code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed with {code}: {message}")]
pub struct Ec2Error {
    /// The operation that failed.
    pub operation: Operation,
    /// EC2's error code, e.g. `InvalidGroup.NotFound` (see [`codes`]); `Transport` for
    /// connection failures and `Http<status>` when only a status is known.
    pub code: String,
    /// EC2's message.
    pub message: String,
}

impl Ec2Error {
    /// An error with `code` for `operation`.
    pub fn new(operation: Operation, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { operation, code: code.into(), message: message.into() }
    }

    /// True for throttling: EC2's `RequestLimitExceeded`, CloudWatch's `Throttling`, and SSM's
    /// `ThrottlingException` (also the name AWS's knowledge center gives CloudWatch's answer).
    pub fn is_throttle(&self) -> bool {
        matches!(self.code.as_str(), codes::REQUEST_LIMIT_EXCEEDED | codes::THROTTLING | codes::THROTTLING_EXCEPTION)
    }

    /// True when the same call may succeed if retried: throttling, internal errors, outages,
    /// transport errors and HTTP 5xx.
    pub fn is_transient(&self) -> bool {
        self.is_throttle()
            || matches!(
                self.code.as_str(),
                codes::INTERNAL_ERROR
                    | codes::UNAVAILABLE
                    | codes::INTERNAL_SERVER_ERROR
                    | "ServiceUnavailable"
                    | "InternalFailure"
                    | "Transport"
            )
            || self.code.starts_with("Http5")
    }

    /// True when EC2 says the resource does not exist (which under eventual consistency may
    /// also mean "not visible yet").
    pub fn is_not_found(&self) -> bool {
        self.code.ends_with(".NotFound")
    }

    /// True when the code is `code`.
    pub fn is(&self, code: &str) -> bool {
        self.code == code
    }
}

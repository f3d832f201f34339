//! The exit codes of `aws-backend`, in one place: what a supervisor can act on
//! (`deploy/aws-backend.service` restarts on every code but 0 and 2). docs/operations.md, "Exit
//! codes", lists them for operators.

use std::fmt;
use std::process::ExitCode;

use aws_backend::ConfigError;
use aws_backend::bridge::Stopped;

/// How the process ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Done (`run`'s grants all ended, `reap` or `status` finished) or drained after a signal.
    Done,
    /// Any other failure: a grant of `run` failed, recovery left a grant unfinished, the
    /// backend could not start. Restarting may help.
    Failed,
    /// The configuration or the command line is wrong (a bad config file, grants file or
    /// socket address): restarting cannot help until an operator fixes it. clap's own usage
    /// errors exit 2 as well.
    Config,
    /// The group's ledger lease was lost: this process stopped acting; started again, it
    /// stands by.
    LeaseLost,
    /// The ledger cannot be opened or replayed (the file is locked by another process, is
    /// corrupt, or the DynamoDB table cannot be read), or the key seed next to it is unusable.
    LedgerUnusable,
    /// A second SIGTERM or SIGINT during a drain: the process stopped at once, as a crash
    /// would; the next process's recovery finishes what it left.
    Interrupted,
    /// `status` or `check-config --aws` found something that needs the operator (an overdue
    /// grant, a failed account check). Not used by `serve` or `run`.
    NeedsOperator,
}

impl Exit {
    /// The process's exit status.
    pub(crate) const fn code(self) -> u8 {
        match self {
            Exit::Done => 0,
            Exit::Failed => 1,
            Exit::Config => 2,
            Exit::LeaseLost => 3,
            Exit::LedgerUnusable => 4,
            Exit::Interrupted => 5,
            Exit::NeedsOperator => 6,
        }
    }

    /// How `Bridge::run` ended, as an exit. A run fails for one of two reasons: the binary's
    /// `Open` could not build the backend (its errors carry the mark [`classify`] gave them,
    /// see `host::open`), or, in group mode, the lease table could not be read or the ledger
    /// replayed under the lease, which carries no mark and is the ledger's.
    pub(crate) fn of_stopped(stopped: &Stopped) -> Exit {
        match stopped {
            Stopped::Drained { .. } => Exit::Done,
            Stopped::LeaseLost(_) => Exit::LeaseLost,
            Stopped::Failed(err) => err.downcast_ref::<Exit>().copied().unwrap_or(Exit::LedgerUnusable),
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// Marks an error with the exit it causes: `err.context(Exit::LedgerUnusable)`. Its display is
/// the first words of the message the operator reads.
impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Exit::Done => "done",
            Exit::Failed => "failed",
            Exit::Config => "configuration error",
            Exit::LeaseLost => "the ledger lease is lost",
            Exit::LedgerUnusable => "the ledger is unusable",
            Exit::Interrupted => "interrupted",
            Exit::NeedsOperator => "needs the operator",
        })
    }
}

/// The exit an error causes: the outermost [`Exit`] it was marked with, else 2 when a
/// [`ConfigError`] (or a backend's refusal of its configuration) is in its chain, else 1.
pub(crate) fn classify(err: &anyhow::Error) -> Exit {
    // anyhow finds a context through every layer of context around it.
    if let Some(exit) = err.downcast_ref::<Exit>() {
        return *exit;
    }
    if err.chain().any(|cause| cause.is::<ConfigError>()) {
        return Exit::Config;
    }
    // The backend refuses a configuration it finds wrong only once it asks EC2 (a subnet that
    // does not exist): `AwsBackend::new` answers `InvalidInput` naming `network.<region>`.
    if err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<backend_api::BackendError>(),
            Some(backend_api::BackendError::InvalidInput { .. })
        )
    }) {
        return Exit::Config;
    }
    Exit::Failed
}

#[cfg(test)]
mod tests {
    use anyhow::anyhow;

    use super::*;

    #[test]
    fn the_codes_are_the_documented_ones() {
        let codes: Vec<u8> = [
            Exit::Done,
            Exit::Failed,
            Exit::Config,
            Exit::LeaseLost,
            Exit::LedgerUnusable,
            Exit::Interrupted,
            Exit::NeedsOperator,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn errors_are_classified_by_their_mark_then_by_their_cause() {
        let problems = vec![aws_backend::ConfigProblem { field: "drain_s".into(), reason: "bad".into() }];
        let config = anyhow::Error::new(ConfigError::Invalid { problems });
        assert_eq!(classify(&config), Exit::Config);
        assert_eq!(classify(&config.context("loading")), Exit::Config);
        let ledger = anyhow!("opening ledger /x: locked").context(Exit::LedgerUnusable);
        assert_eq!(classify(&ledger), Exit::LedgerUnusable);
        assert!(format!("{ledger:#}").starts_with("the ledger is unusable: opening ledger"), "{ledger:#}");
        assert_eq!(classify(&anyhow!("something else")), Exit::Failed);
        let network = anyhow::Error::new(backend_api::BackendError::InvalidInput {
            field: "network.us-east-1".into(),
            reason: "no such subnet".into(),
        });
        assert_eq!(classify(&network), Exit::Config);
    }

    #[test]
    fn a_bridge_stop_maps_to_its_exit() {
        assert_eq!(Exit::of_stopped(&Stopped::Drained { cut_short: 2 }), Exit::Done);
        assert_eq!(Exit::of_stopped(&Stopped::LeaseLost("fenced".into())), Exit::LeaseLost);
        // Unmarked: the lease table or the replay under the lease failed.
        assert_eq!(Exit::of_stopped(&Stopped::Failed(anyhow!("scan failed"))), Exit::LedgerUnusable);
        let open = anyhow!("EC2 unreachable").context(Exit::Failed);
        assert_eq!(Exit::of_stopped(&Stopped::Failed(open)), Exit::Failed);
    }
}

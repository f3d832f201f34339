//! The lease of a bridge group: which process may write a shared ledger, at which epoch, and
//! until when a standby must wait before it may take over. The store that keeps the lease item
//! (`ledger-dynamodb`'s table, or the simulation's store) implements the protocol; these are its
//! words, free of any store's crates.

use crate::store::StoreError;

/// The longest group or holder name: short enough to print, long enough for a host name.
pub const LEASE_NAME_CHARS_MAX: usize = 128;

/// The lease a writer holds: the ledger of `group` is written by `holder`, at `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The bridge group whose ledger this is.
    pub group: String,
    /// Who holds it (unique per bridge process, e.g. host name, process id and start time).
    pub holder: String,
    /// Raised by every acquisition: writes carrying an older epoch are refused.
    pub epoch: u64,
    /// Until when, by the holder's clock, no standby may take the lease (unix milliseconds).
    pub expires_unix_ms: u64,
}

/// The lease as the store holds it, for `status` and for an error saying who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The holder.
    pub holder: String,
    /// The epoch of its acquisition.
    pub epoch: u64,
    /// Until when it is held, unix milliseconds (0 once released).
    pub expires_unix_ms: u64,
}

/// Why a lease was not acquired.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another holder's lease has not expired yet.
    #[error(
        "the ledger lease of bridge group {group} is held by {} at epoch {} until unix ms {} (now {now_unix_ms}): wait for it to expire, or stop that bridge",
        held.holder, held.epoch, held.expires_unix_ms
    )]
    Held {
        /// The group.
        group: String,
        /// Who holds it.
        held: LeaseInfo,
        /// The time this acquirer compared the expiry with.
        now_unix_ms: u64,
    },
    /// A group or holder name that cannot be used.
    #[error("{what} {value:?} is not usable: use 1-{LEASE_NAME_CHARS_MAX} printable characters without spaces")]
    InvalidName {
        /// `group` or `holder`.
        what: &'static str,
        /// The name given.
        value: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a group or holder name (`what` names which, for the error).
pub fn check_lease_name(what: &'static str, value: &str) -> Result<(), LeaseError> {
    let usable = !value.is_empty()
        && value.chars().count() <= LEASE_NAME_CHARS_MAX
        && value.chars().all(|c| !c.is_control() && !c.is_whitespace());
    if usable { Ok(()) } else { Err(LeaseError::InvalidName { what, value: value.to_string() }) }
}

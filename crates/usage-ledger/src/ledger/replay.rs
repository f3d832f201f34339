//! Replay: stored records folded into [`Books`], with the grants still live kept in a hash map
//! while it runs, so that most records find their grant without a walk down the ordered map.
//!
//! A log interleaves the events of the few grants alive at a time, and a grant that settles
//! seldom hears of again; the ordered map (whose id order the queries and snapshots rely on)
//! then serves a few look-ups per grant instead of one per record. Every grant is in one
//! map or the other; [`Replay::finish`] puts the live ones back.

use sha2::Digest;

use super::{Books, LedgerError};
use crate::event::Record;
use crate::state::{GrantState, IdMap};

/// Books being replayed into (see the module documentation).
pub(crate) struct Replay {
    books: Books,
    /// The grants not settled, out of `books.grants` until [`Replay::finish`].
    live: IdMap<GrantState>,
}

impl Replay {
    /// Replays onto `books` (empty, or resumed from a snapshot).
    pub(crate) fn new(books: Books) -> Self {
        Self { books, live: IdMap::default() }
    }

    /// Folds one durable record, whose stored payload is `payload`, into the books. On an
    /// error its grant is unchanged (the caller drops the replay: the log cannot be opened
    /// from here).
    pub(crate) fn record(&mut self, record: &Record, payload: &[u8]) -> Result<(), LedgerError> {
        let grant = record.grant;
        let Some(state) = self.live.get_mut(&grant) else {
            // A new grant, or a settled one: through the ordered map, as without this cache;
            // then a grant live after it (new, or admitted again by `GrantRetried`) moves here.
            self.books.replay(record, payload)?;
            if let Some(state) = self.books.grants.remove(&grant) {
                if state.is_settled() {
                    self.books.grants.insert(grant, state);
                } else {
                    self.live.insert(grant, state);
                }
            }
            return Ok(());
        };
        state.step(record)?;
        if state.is_settled()
            && let Some(state) = self.live.remove(&grant)
        {
            self.books.grants.insert(grant, state);
        }
        self.books.hasher.update(payload);
        self.books.records += 1;
        Ok(())
    }

    /// The books after every record replayed.
    pub(crate) fn finish(mut self) -> Books {
        self.books.grants.extend(self.live);
        self.books
    }
}

//! The coalition clock: ticks, and the mapping from ticks to unix time.

use serde::{Deserialize, Serialize};

/// One tick of the coalition's clock. Ticks are ordered; deadlines such as a grant's
/// `valid_to` are expressed in them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AlmanacTick(pub u64);

impl std::fmt::Display for AlmanacTick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tick {}", self.0)
    }
}

/// Maps ticks to unix time: tick `n` starts at `epoch_unix_ms + n * tick_ms`.
///
/// Conversions saturate at the edges instead of overflowing: a tick beyond the
/// representable range maps to `u64::MAX` ms, and a time before the epoch maps to tick 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AlmanacRaw")]
pub struct Almanac {
    epoch_unix_ms: u64,
    tick_ms: u64,
}

#[derive(Deserialize)]
struct AlmanacRaw {
    epoch_unix_ms: u64,
    tick_ms: u64,
}

impl TryFrom<AlmanacRaw> for Almanac {
    type Error = AlmanacError;
    fn try_from(raw: AlmanacRaw) -> Result<Self, Self::Error> {
        Almanac::new(raw.epoch_unix_ms, raw.tick_ms)
    }
}

/// A tick mapping that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AlmanacError {
    /// A tick of zero milliseconds would put every tick at the epoch.
    #[error("almanac tick_ms is 0: set tick_ms to the length of one coalition tick in milliseconds, e.g. 1000")]
    ZeroTickLength,
}

impl Almanac {
    /// An almanac whose tick 0 starts at `epoch_unix_ms` and whose ticks last `tick_ms`.
    pub fn new(epoch_unix_ms: u64, tick_ms: u64) -> Result<Self, AlmanacError> {
        if tick_ms == 0 {
            return Err(AlmanacError::ZeroTickLength);
        }
        Ok(Self { epoch_unix_ms, tick_ms })
    }

    /// When tick 0 starts, in unix milliseconds.
    pub fn epoch_unix_ms(&self) -> u64 {
        self.epoch_unix_ms
    }

    /// The length of one tick in milliseconds.
    pub fn tick_ms(&self) -> u64 {
        self.tick_ms
    }

    /// The unix time at which `tick` starts, saturating at `u64::MAX`.
    pub fn tick_to_unix_ms(&self, tick: AlmanacTick) -> u64 {
        tick.0.saturating_mul(self.tick_ms).saturating_add(self.epoch_unix_ms)
    }

    /// The tick in force at `unix_ms`: tick 0 before the epoch.
    pub fn unix_ms_to_tick(&self, unix_ms: u64) -> AlmanacTick {
        AlmanacTick(unix_ms.saturating_sub(self.epoch_unix_ms) / self.tick_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_inside_the_range() {
        let almanac = Almanac::new(1_700_000_000_000, 1_000).expect("valid almanac");
        for tick in [0, 1, 59, 3_600, 1 << 40] {
            let ms = almanac.tick_to_unix_ms(AlmanacTick(tick));
            assert_eq!(almanac.unix_ms_to_tick(ms), AlmanacTick(tick));
            // Any instant inside the tick maps back to it.
            assert_eq!(almanac.unix_ms_to_tick(ms + 999), AlmanacTick(tick));
        }
    }

    #[test]
    fn saturates_at_both_edges() {
        let almanac = Almanac::new(1_000, 7).expect("valid almanac");
        assert_eq!(almanac.tick_to_unix_ms(AlmanacTick(u64::MAX)), u64::MAX);
        assert_eq!(almanac.tick_to_unix_ms(AlmanacTick(0)), 1_000);
        assert_eq!(almanac.unix_ms_to_tick(0), AlmanacTick(0));
        assert_eq!(almanac.unix_ms_to_tick(999), AlmanacTick(0));
        assert_eq!(almanac.unix_ms_to_tick(u64::MAX), AlmanacTick((u64::MAX - 1_000) / 7));
        let at_max = Almanac::new(u64::MAX, 1).expect("valid almanac");
        assert_eq!(at_max.tick_to_unix_ms(AlmanacTick(5)), u64::MAX);
    }

    #[test]
    fn zero_tick_length_is_refused() {
        assert_eq!(Almanac::new(0, 0), Err(AlmanacError::ZeroTickLength));
        let err = serde_json::from_str::<Almanac>(r#"{"epoch_unix_ms":0,"tick_ms":0}"#)
            .expect_err("tick_ms 0 must not deserialize");
        assert!(err.to_string().contains("tick_ms"), "{err}");
    }
}

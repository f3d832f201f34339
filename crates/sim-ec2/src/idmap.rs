//! Lookups by the ids the simulator makes (`i-0…`, `vol-0…`): keyed by the 64 bits each id
//! spells, not by its text.
//!
//! An id is its prefix, `-0`, and 16 lowercase hex digits of a number drawn from the PRNG (see
//! `World::new_id`); the map keeps that number. Keys are then 8 bytes hashed in one step
//! instead of a 19-byte string allocated per entry, and a long run's table is a fraction of
//! the size, so the lookup every DescribeInstances makes misses the cache less. A text that is
//! not exactly such an id spells no number and is found nowhere, as it was never made.

use crate::fxhash::FxHashMap;

/// Indexes by id, for ids of one prefix.
#[derive(Debug, Default)]
pub(crate) struct IdMap {
    prefix: &'static str,
    by_number: FxHashMap<u64, usize>,
}

impl IdMap {
    /// An empty map for ids starting `prefix` (`"i"`, `"vol"`).
    pub(crate) fn new(prefix: &'static str) -> Self {
        Self { prefix, by_number: FxHashMap::default() }
    }

    /// The number `id` spells, when it is one of this map's ids in form: exactly 16 lowercase
    /// hex digits, one text per number, so that no other spelling of it finds the entry (as
    /// none did when the map was keyed by text).
    fn number(&self, id: &str) -> Option<u64> {
        let digits = id.as_bytes().strip_prefix(self.prefix.as_bytes())?.strip_prefix(b"-0")?;
        if digits.len() != 16 {
            return None;
        }
        let mut number = 0u64;
        for &b in digits {
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => return None,
            };
            number = number << 4 | u64::from(digit);
        }
        Some(number)
    }

    /// The index of `id`, if it was inserted.
    pub(crate) fn get(&self, id: &str) -> Option<&usize> {
        self.by_number.get(&self.number(id)?)
    }

    /// True when the id spelling `number` was inserted.
    pub(crate) fn contains_number(&self, number: u64) -> bool {
        self.by_number.contains_key(&number)
    }

    /// Records the id spelling `number` at `index`.
    pub(crate) fn insert(&mut self, number: u64, index: usize) {
        self.by_number.insert(number, index);
    }
}

/// An id as the simulator makes it: `prefix`, `-0`, then `number` in 16 lowercase hex digits.
pub(crate) fn spell(prefix: &str, number: u64) -> String {
    // Written out rather than formatted: ids are made at every launch and create.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(prefix.len() + 18);
    id.push_str(prefix);
    id.push_str("-0");
    for shift in (0..16).rev() {
        id.push(char::from(HEX[((number >> (shift * 4)) & 0xF) as usize]));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exactly_the_ids_inserted() {
        let mut map = IdMap::new("i");
        let id = spell("i", 0xdead_beef);
        assert_eq!(id, "i-000000000deadbeef");
        for n in [0, 1, 0x0123_4567_89ab_cdef, u64::MAX] {
            assert_eq!(spell("sg", n), format!("sg-0{n:016x}"), "the spelling ids always had");
        }
        map.insert(0xdead_beef, 7);
        assert_eq!(map.get(&id), Some(&7));
        assert!(map.contains_number(0xdead_beef));
        // Other spellings of the same number, other prefixes and malformed ids are not it.
        for other in
            ["i-000000000DEADBEEF", "vol-000000000deadbeef", "i-00000000deadbeef", "i-0+0000000deadbeef", "i-1"]
        {
            assert_eq!(map.get(other), None, "{other}");
        }
        assert_eq!(map.get("i-nothex"), None);
    }
}

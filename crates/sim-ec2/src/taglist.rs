//! Tags as the simulator keeps them on instances and volumes: a short sorted list.
//!
//! The simulator remembers every instance it ever launched (ground truth needs them), each with
//! two tag sets of a few entries. As a `BTreeMap` each set costs a 500-byte node; as a sorted
//! list it costs its entries, which keeps a long run's memory, and the page faults of growing
//! it, a fraction of what they were. Answers still carry [`Tags`].

use aws_backend::port::Tags;

/// Tags sorted by key, each key once: the same content as a [`Tags`], smaller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TagList(Vec<(String, String)>);

impl TagList {
    /// The same tags as `tags`.
    pub(crate) fn from_tags(tags: &Tags) -> Self {
        // A BTreeMap iterates in key order, so the list comes out sorted.
        Self(tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// The tags as EC2's answers carry them.
    pub(crate) fn to_tags(&self) -> Tags {
        // A B-tree node holds 11 entries: up to that, one insert each fills one node, where
        // `collect` would first gather the entries into a vector of its own and sort it. From
        // the last key down, each insert finds its place at the first key it compares.
        const ONE_NODE_MAX: usize = 11;
        if self.0.len() > ONE_NODE_MAX {
            return self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        let mut tags = Tags::new();
        for (k, v) in self.0.iter().rev() {
            tags.insert(k.clone(), v.clone());
        }
        tags
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The value of `key`, if tagged. A resource carries a few tags, and every Describe filter
    /// asks for one of each resource listed: a scan compares lengths first and seldom calls
    /// memcmp, where a binary search compares bytes at every step. Keys are unique, so both
    /// find the same entry.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        const SCANNED_MAX: usize = 8;
        if self.0.len() <= SCANNED_MAX {
            return self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        }
        self.position(key).ok().map(|i| self.0[i].1.as_str())
    }

    /// True when `key` is tagged.
    pub(crate) fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// How many tags.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The keys, in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// Adds `tags`, overwriting the values of keys already there (CreateTags).
    pub(crate) fn merge(&mut self, tags: &Tags) {
        for (k, v) in tags {
            match self.position(k) {
                Ok(i) => v.clone_into(&mut self.0[i].1),
                Err(i) => self.0.insert(i, (k.clone(), v.clone())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_the_map_it_stands_for() {
        let mut map = Tags::from([("b".to_string(), "2".to_string()), ("a".to_string(), "1".to_string())]);
        let mut list = TagList::from_tags(&map);
        assert_eq!(list.to_tags(), map);
        assert_eq!(list.get("a"), Some("1"));
        assert_eq!(list.get("c"), None);
        let more = Tags::from([("c".to_string(), "3".to_string()), ("a".to_string(), "9".to_string())]);
        list.merge(&more);
        map.extend(more);
        assert_eq!(list.to_tags(), map);
        assert_eq!(list.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        // Past the few tags a scan looks through, a binary search finds the same.
        let many: Tags = (0..20).map(|i| (format!("k{i:02}"), format!("v{i}"))).collect();
        let long = TagList::from_tags(&many);
        for (k, v) in &many {
            assert_eq!(long.get(k), Some(v.as_str()));
        }
        assert_eq!(long.get("k99"), None);
        assert_eq!(list.len(), 3);
        assert!(list.contains_key("b"));
    }
}

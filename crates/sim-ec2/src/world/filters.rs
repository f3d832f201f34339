//! Describe filters as EC2 reads them: `tag:<key>`, `tag-key` and the fields each Describe
//! names, matched with EC2's wildcards, over either form the simulator keeps tags in.

use aws_backend::port::{Ec2Error, Filter, Operation, Tags, codes};

use super::err;
use crate::taglist::TagList;

/// EC2's Describe wildcards: `*` for any run, `?` for one character.
pub(super) fn glob(pattern: &str, text: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return pattern == text;
    }
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

pub(super) enum FilterName<'a> {
    Tag(&'a str),
    TagKey,
    Field(&'static str),
}

pub(super) struct ParsedFilter<'a> {
    pub(super) name: FilterName<'a>,
    values: &'a [String],
}

pub(super) fn parse_filters<'a>(
    op: Operation,
    filters: &'a [Filter],
    fields: &[&'static str],
) -> Result<Vec<ParsedFilter<'a>>, Ec2Error> {
    filters
        .iter()
        .map(|f| {
            let name = if let Some(key) = f.name.strip_prefix("tag:") {
                FilterName::Tag(key)
            } else if f.name == "tag-key" {
                FilterName::TagKey
            } else if let Some(field) = fields.iter().find(|n| **n == f.name) {
                FilterName::Field(field)
            } else {
                return Err(err(op, codes::INVALID_PARAMETER_VALUE, format!("The filter '{}' is invalid", f.name)));
            };
            Ok(ParsedFilter { name, values: &f.values })
        })
        .collect()
}

/// The lookups Describe filters make, over either form the simulator keeps tags in.
pub(super) trait TagSet {
    fn tag(&self, key: &str) -> Option<&str>;
    fn any_key(&self, pred: impl FnMut(&str) -> bool) -> bool;
}

impl TagSet for Tags {
    fn tag(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }

    fn any_key(&self, mut pred: impl FnMut(&str) -> bool) -> bool {
        self.keys().any(|k| pred(k))
    }
}

impl TagSet for TagList {
    fn tag(&self, key: &str) -> Option<&str> {
        self.get(key)
    }

    fn any_key(&self, pred: impl FnMut(&str) -> bool) -> bool {
        self.keys().any(pred)
    }
}

pub(super) fn matches<'a>(
    filters: &[ParsedFilter<'_>],
    tags: &impl TagSet,
    field: impl Fn(&str) -> Option<&'a str>,
) -> bool {
    filters.iter().all(|f| {
        let any = |text: &str| f.values.iter().any(|p| glob(p, text));
        match &f.name {
            FilterName::Tag(key) => tags.tag(key).is_some_and(any),
            FilterName::TagKey => tags.any_key(any),
            FilterName::Field(name) => field(name).is_some_and(any),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_follows_ec2_wildcards() {
        assert!(glob("grant-*", "grant-42"));
        assert!(glob("*", ""));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(glob("*b*d", "abcbd"));
        assert!(!glob("exact", "exactly"));
        assert!(glob("exact", "exact"));
    }
}

//! Pagination of the Describe calls: `MaxResults` and `NextToken`.
//!
//! EC2 pages DescribeInstances, DescribeSecurityGroups, DescribeInstanceTypes and
//! DescribeInstanceTypeOfferings; DescribeKeyPairs answers every match at once. What the
//! simulator holds callers to (EC2 API Reference, "Pagination",
//! <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/Query-Requests.html#api-pagination>;
//! EC2 Developer Guide, "Pagination in the Amazon EC2 API"):
//! - `MaxResults` lies within the action's bounds (`Operation::max_results_limit`), else
//!   `InvalidParameterValue`; with a list of ids it is refused (`InvalidParameterCombination`).
//! - A page holds at most `MaxResults` items and may hold fewer, even none, while more remain
//!   (`FaultConfig::page_short_probability`); only a missing `NextToken` ends the listing.
//! - A token resumes after the last item its page held, so items created meanwhile further on
//!   are seen and items deleted meanwhile are not; a token from another query is refused
//!   (`InvalidPaginationToken`).
//! - Without `MaxResults` the whole answer comes in one page.

use aws_backend::port::{Ec2Error, Operation, Page, PageRequest, codes};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A page request checked against the action's rules: where the page starts and how long it
/// may be.
#[derive(Debug)]
pub(crate) struct Window {
    /// The query's fingerprint, when the request's token needed it.
    fingerprint: Option<u64>,
    /// The page starts after the item with this key; `None`: at the first item.
    after: Option<String>,
    max_results: Option<u32>,
}

/// Checks `page` for `op` (`by_ids`: the call named ids) in the query `fingerprint` identifies
/// (see [`fingerprint`]; worked out only when the request carries a token).
pub(crate) fn window(
    op: Operation,
    page: &PageRequest,
    by_ids: bool,
    fingerprint: impl FnOnce() -> u64,
) -> Result<Window, Ec2Error> {
    if let Some(max) = page.max_results {
        let (lo, hi) = op.max_results_limit().unwrap_or((1, u32::MAX));
        if by_ids {
            return Err(Ec2Error::new(
                op,
                codes::INVALID_PARAMETER_COMBINATION,
                "The parameter MaxResults cannot be used with the parameter ids",
            ));
        }
        if !(lo..=hi).contains(&max) {
            return Err(Ec2Error::new(
                op,
                codes::INVALID_PARAMETER_VALUE,
                format!(
                    "Value ( {max} ) for parameter maxResults is invalid. Expecting a value between {lo} and {hi}."
                ),
            ));
        }
    }
    let (after, fingerprint) = match &page.next_token {
        None => (None, None),
        Some(token) => {
            let fingerprint = fingerprint();
            let after = parse_token(token, fingerprint).ok_or_else(|| {
                Ec2Error::new(op, codes::INVALID_PAGINATION_TOKEN, format!("The pagination token {token} is invalid."))
            })?;
            (Some(after), Some(fingerprint))
        }
    };
    Ok(Window { fingerprint, after, max_results: page.max_results })
}

/// A query's fingerprint, from everything that selects its items: a token carries it, so a
/// token is good only for the query that gave it out. It formats every part, so callers work it
/// out only when a token is read or given out (most answers are one page and need none).
pub(crate) fn fingerprint(op: Operation, parts: &[&dyn std::fmt::Debug]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = crate::fxhash::FxHasher::default();
    op.name().hash(&mut h);
    for p in parts {
        format!("{p:?}").hash(&mut h);
    }
    h.finish()
}

/// Cuts the page `window` asks for out of `items`, sorted by their keys (unique, ascending).
/// With probability `short_probability` a paged answer is cut short at a drawn length, from
/// none to all of what fits, and still carries a token. (The simulator pages through
/// [`cut_keyed`]; this is its plain form, which the tests drive.)
#[cfg(test)]
pub(crate) fn cut<T>(
    window: Window,
    items: Vec<(String, T)>,
    fingerprint: u64,
    short_probability: f64,
    rng: &mut ChaCha8Rng,
) -> Page<(String, T)> {
    cut_keyed(window, items, |(key, _)| key.clone(), || fingerprint, short_probability, rng)
}

/// [`cut`] for items whose key `key` spells out: only the few keys the cut looks at are made
/// (a binary search's and the last kept item's), not one per item. The page, the token and
/// the draws are those of [`cut`] over the same items with their keys. `fingerprint` is asked
/// only when the page gives out a token the request's did not already identify.
pub(crate) fn cut_keyed<T>(
    window: Window,
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    fingerprint: impl FnOnce() -> u64,
    short_probability: f64,
    rng: &mut ChaCha8Rng,
) -> Page<T> {
    let start = match &window.after {
        None => 0,
        Some(after) => items.partition_point(|item| key(item).as_str() <= after.as_str()),
    };
    let remaining = items.len() - start;
    let Some(max) = window.max_results else {
        return Page::last(items.into_iter().skip(start).collect());
    };
    let fits = remaining.min(max as usize);
    // Nothing left: the last page, so that every listing ends.
    let short = remaining > 0 && short_probability > 0.0 && rng.gen_bool(short_probability.min(1.0));
    let take = if short { rng.gen_range(0..=fits) } else { fits };
    let more = short || take < remaining;
    let kept: Vec<T> = items.into_iter().skip(start).take(take).collect();
    let next_token = more.then(|| {
        let last = kept.last().map(&key);
        token(window.fingerprint.unwrap_or_else(fingerprint), last.as_deref().or(window.after.as_deref()))
    });
    Page { items: kept, next_token }
}

fn token(fingerprint: u64, after: Option<&str>) -> String {
    match after {
        None => format!("{fingerprint:016x}"),
        Some(key) => format!("{fingerprint:016x}.{key}"),
    }
}

/// The key a token resumes after (`Some("")`-free: `None` inside means "from the start"),
/// or `None` when the token is not this query's.
fn parse_token(token: &str, fingerprint: u64) -> Option<String> {
    let fp = token.get(..16)?;
    if u64::from_str_radix(fp, 16).ok()? != fingerprint {
        return None;
    }
    match token.get(16..)? {
        "" => Some(String::new()),
        rest => rest.strip_prefix('.').map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn items(n: usize) -> Vec<(String, usize)> {
        (0..n).map(|i| (format!("{i:04}"), i)).collect()
    }

    fn follow(n: usize, max: u32, short: f64, seed: u64) -> (Vec<usize>, usize) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let op = Operation::DescribeInstances;
        let fp = fingerprint(op, &[&"q"]);
        let mut request = PageRequest::first(max);
        let (mut seen, mut pages) = (Vec::new(), 0);
        loop {
            let w = window(op, &request, false, || fp).expect("valid");
            let page = cut(w, items(n), fp, short, &mut rng);
            pages += 1;
            assert!(page.items.len() <= max as usize);
            seen.extend(page.items.into_iter().map(|(_, i)| i));
            match page.next_token {
                Some(t) => request.next_token = Some(t),
                None => return (seen, pages),
            }
        }
    }

    #[test]
    fn following_every_token_sees_every_item_once_even_with_short_and_empty_pages() {
        for seed in 0..50 {
            let (seen, pages) = follow(23, 5, 0.5, seed);
            assert_eq!(seen, (0..23).collect::<Vec<_>>(), "seed {seed}");
            assert!(pages >= 5);
        }
        assert_eq!(follow(10, 5, 0.0, 1), ((0..10).collect(), 2));
        assert_eq!(follow(0, 5, 0.0, 1), (vec![], 1));
    }

    #[test]
    fn stopping_at_the_first_page_misses_items() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let op = Operation::DescribeInstances;
        let fp = fingerprint(op, &[]);
        let w = window(op, &PageRequest::first(5), false, || fp).expect("valid");
        let page = cut(w, items(12), fp, 0.0, &mut rng);
        assert_eq!(page.items.len(), 5);
        assert!(page.next_token.is_some());
    }

    #[test]
    fn bad_requests_are_refused_with_ec2s_codes() {
        let op = Operation::DescribeInstances;
        let code = |r: Result<Window, Ec2Error>| r.expect_err("refused").code;
        assert_eq!(code(window(op, &PageRequest::first(5), true, || 1)), codes::INVALID_PARAMETER_COMBINATION);
        assert_eq!(code(window(op, &PageRequest::first(4), false, || 1)), codes::INVALID_PARAMETER_VALUE);
        assert_eq!(code(window(op, &PageRequest::first(1_001), false, || 1)), codes::INVALID_PARAMETER_VALUE);
        let types = Operation::DescribeInstanceTypes;
        assert_eq!(code(window(types, &PageRequest::first(101), false, || 1)), codes::INVALID_PARAMETER_VALUE);
        let foreign = PageRequest { max_results: Some(5), next_token: Some(token(2, Some("0003"))) };
        assert_eq!(code(window(op, &foreign, false, || 1)), codes::INVALID_PAGINATION_TOKEN);
        assert_eq!(
            code(window(op, &PageRequest { max_results: Some(5), next_token: Some("x".into()) }, false, || 1)),
            codes::INVALID_PAGINATION_TOKEN
        );
        window(op, &PageRequest::unpaged(), true, || 1).expect("ids without MaxResults");
    }
}

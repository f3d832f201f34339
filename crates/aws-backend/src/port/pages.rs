//! Paginated Describe calls: the page to ask for ([`PageRequest`]), the page answered
//! ([`Page`]), and [`all_pages`], which follows a listing to its end unpaced.

use serde::{Deserialize, Serialize};

use super::{Ec2Error, Operation};

/// Which page of a paginated Describe call to ask for: `MaxResults` and `NextToken`.
///
/// EC2 refuses `MaxResults` together with a list of ids (`InvalidParameterCombination`), so a
/// lookup by ids asks [`PageRequest::unpaged`]. See [`Operation::max_results_limit`] for the
/// bounds of `MaxResults`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    /// At most this many items in the page; `None`: EC2 answers every match at once.
    pub max_results: Option<u32>,
    /// The previous page's token; `None` for the first page.
    pub next_token: Option<String>,
}

impl PageRequest {
    /// The first page, of at most `max_results` items.
    pub fn first(max_results: u32) -> Self {
        Self { max_results: Some(max_results), next_token: None }
    }

    /// No `MaxResults`: the whole answer in one page (lookups by id).
    pub fn unpaged() -> Self {
        Self::default()
    }

    /// The first page of a listing of `op`: as large as EC2 allows when listing by filters,
    /// unpaged when `by_ids` (EC2 refuses `MaxResults` with ids).
    pub fn listing(op: Operation, by_ids: bool) -> Self {
        match op.max_results_limit() {
            Some((_, max)) if !by_ids => Self::first(max),
            _ => Self::unpaged(),
        }
    }
}

/// One page of a paginated Describe call.
///
/// EC2 may answer fewer than `MaxResults` items, even none, while more remain: only a missing
/// `next_token` ends the listing (EC2 API Reference, "Pagination",
/// <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/Query-Requests.html#api-pagination>;
/// EC2 Developer Guide, "Pagination in the Amazon EC2 API",
/// <https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-pagination.html>).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// This page's items.
    pub items: Vec<T>,
    /// The token for the next page; `None` on the last page.
    pub next_token: Option<String>,
}

impl<T> Page<T> {
    /// A last page holding `items`.
    pub fn last(items: Vec<T>) -> Self {
        Self { items, next_token: None }
    }
}

/// Pages of a listing followed to the end, unpaced: `call` is asked for each page in turn.
///
/// For tests and tools. The backend follows pages through `Pacer::pages`, which paces and
/// retries each page as the call it is.
pub async fn all_pages<T, F, Fut>(first: PageRequest, mut call: F) -> Result<Vec<T>, Ec2Error>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>, Ec2Error>>,
{
    let mut request = first;
    let mut items = Vec::new();
    loop {
        let page = call(request.clone()).await?;
        items.extend(page.items);
        match page.next_token {
            Some(token) => request.next_token = Some(token),
            None => return Ok(items),
        }
    }
}

//! `[network]`: [`NetworkConfig`], the subnets a region's grants launch into.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Where a region's grants launch: subnets named by id, or chosen by their tags (every tag
/// must match, as a term of Karpenter's `subnetSelectorTerms` does). Exactly one of the two.
/// The subnets must all be in one VPC, where each grant's security group is created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Subnet ids, e.g. `["subnet-0123456789abcdef0"]`.
    #[serde(default)]
    pub subnet_ids: Vec<String>,
    /// Tags a subnet must carry to be used, e.g. `{ "compute-bridge/subnet" = "grants" }`.
    #[serde(default)]
    pub subnet_tags: BTreeMap<String, String>,
}

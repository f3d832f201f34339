//! The port's operations ([`Operation`]) and the request quotas they draw on: EC2's token
//! bucket classes, CloudWatch's and Parameter Store's ([`ThrottleClass`]), and the instance
//! buckets of RunInstances and TerminateInstances.

use serde::{Deserialize, Serialize};

/// The operations of the port, for throttling, audit and fault injection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// ImportKeyPair.
    ImportKeyPair,
    /// DescribeKeyPairs.
    DescribeKeyPairs,
    /// DeleteKeyPair.
    DeleteKeyPair,
    /// CreateSecurityGroup.
    CreateSecurityGroup,
    /// AuthorizeSecurityGroupIngress.
    AuthorizeSecurityGroupIngress,
    /// DescribeSecurityGroups.
    DescribeSecurityGroups,
    /// DeleteSecurityGroup.
    DeleteSecurityGroup,
    /// RunInstances.
    RunInstances,
    /// DescribeInstances.
    DescribeInstances,
    /// TerminateInstances.
    TerminateInstances,
    /// DescribeInstanceTypes.
    DescribeInstanceTypes,
    /// CreateTags.
    CreateTags,
    /// CloudWatch GetMetricData for NetworkIn and NetworkOut.
    GetNetworkUsage,
    /// GetConsoleOutput.
    GetConsoleOutput,
    /// DescribeInstanceTypeOfferings with location type `availability-zone`.
    DescribeInstanceTypeOfferings,
    /// DescribeSubnets.
    DescribeSubnets,
    /// SSM's GetParameter: an AMI alias (a public parameter such as
    /// `/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64`) read as an id.
    GetParameter,
}

impl Operation {
    /// Every operation, in declaration order.
    pub const ALL: [Operation; 17] = [
        Operation::ImportKeyPair,
        Operation::DescribeKeyPairs,
        Operation::DeleteKeyPair,
        Operation::CreateSecurityGroup,
        Operation::AuthorizeSecurityGroupIngress,
        Operation::DescribeSecurityGroups,
        Operation::DeleteSecurityGroup,
        Operation::RunInstances,
        Operation::DescribeInstances,
        Operation::TerminateInstances,
        Operation::DescribeInstanceTypes,
        Operation::CreateTags,
        Operation::GetNetworkUsage,
        Operation::GetConsoleOutput,
        Operation::DescribeInstanceTypeOfferings,
        Operation::DescribeSubnets,
        Operation::GetParameter,
    ];

    /// The API name, e.g. `"RunInstances"`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::ImportKeyPair => "ImportKeyPair",
            Operation::DescribeKeyPairs => "DescribeKeyPairs",
            Operation::DeleteKeyPair => "DeleteKeyPair",
            Operation::CreateSecurityGroup => "CreateSecurityGroup",
            Operation::AuthorizeSecurityGroupIngress => "AuthorizeSecurityGroupIngress",
            Operation::DescribeSecurityGroups => "DescribeSecurityGroups",
            Operation::DeleteSecurityGroup => "DeleteSecurityGroup",
            Operation::RunInstances => "RunInstances",
            Operation::DescribeInstances => "DescribeInstances",
            Operation::TerminateInstances => "TerminateInstances",
            Operation::DescribeInstanceTypes => "DescribeInstanceTypes",
            Operation::CreateTags => "CreateTags",
            Operation::GetNetworkUsage => "GetNetworkUsage",
            Operation::GetConsoleOutput => "GetConsoleOutput",
            Operation::DescribeInstanceTypeOfferings => "DescribeInstanceTypeOfferings",
            Operation::DescribeSubnets => "DescribeSubnets",
            Operation::GetParameter => "GetParameter",
        }
    }

    /// The category that sizes the call's request-rate token bucket. Each action has its own
    /// bucket of its category's size and refill (per account and region): being throttled on
    /// one action does not throttle another of the same category. GetNetworkUsage draws from
    /// CloudWatch's own quota instead, and GetParameter from Parameter Store's.
    ///
    /// Source: "Request throttling for the Amazon EC2 API", EC2 developer guide
    /// (docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html; docs/ec2-facts.md,
    /// "Throttling").
    pub fn throttle_class(self) -> ThrottleClass {
        match self {
            Operation::DescribeKeyPairs
            | Operation::DescribeSecurityGroups
            | Operation::DescribeInstances
            | Operation::DescribeInstanceTypes
            | Operation::GetConsoleOutput
            | Operation::DescribeInstanceTypeOfferings
            | Operation::DescribeSubnets => ThrottleClass::NonMutating,
            // ImportKeyPair is in EC2's CreateKeyPair-like "resource-intensive" set together
            // with AuthorizeSecurityGroupIngress.
            Operation::ImportKeyPair | Operation::AuthorizeSecurityGroupIngress => ThrottleClass::ResourceIntensive,
            Operation::RunInstances => ThrottleClass::RunInstances,
            Operation::TerminateInstances => ThrottleClass::TerminateInstances,
            Operation::CreateTags => ThrottleClass::CreateTags,
            Operation::DeleteKeyPair | Operation::CreateSecurityGroup | Operation::DeleteSecurityGroup => {
                ThrottleClass::Mutating
            }
            // CloudWatch's quota, not EC2's buckets.
            Operation::GetNetworkUsage => ThrottleClass::GetMetricData,
            // Parameter Store's quota, not EC2's buckets.
            Operation::GetParameter => ThrottleClass::GetParameter,
        }
    }
}

impl Operation {
    /// The bounds EC2 puts on `MaxResults` for the paginated Describe calls, `(min, max)`;
    /// `None` for calls without pages (DescribeKeyPairs answers every match at once).
    ///
    /// Source: the EC2 API Reference's pages for DescribeInstances, DescribeSecurityGroups and
    /// DescribeInstanceTypeOfferings (5 to 1,000) and DescribeInstanceTypes (5 to 100).
    pub fn max_results_limit(self) -> Option<(u32, u32)> {
        match self {
            Operation::DescribeInstances
            | Operation::DescribeSecurityGroups
            | Operation::DescribeInstanceTypeOfferings
            | Operation::DescribeSubnets => Some((5, 1_000)),
            Operation::DescribeInstanceTypes => Some((5, 100)),
            _ => None,
        }
    }

    /// The operation's place in [`Operation::ALL`], for tables of one entry per action.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The categories that size EC2's request token buckets (every action has a bucket of its own,
/// per account and region, with its category's capacity and refill), and CloudWatch's
/// GetMetricData quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ThrottleClass {
    /// Describe* calls: 100 tokens, refilling 20/s.
    NonMutating,
    /// Create/Delete/Modify calls: 50 tokens, refilling 5/s.
    Mutating,
    /// ImportKeyPair/CreateKeyPair, AuthorizeSecurityGroupIngress: 50 tokens, refilling 5/s.
    ResourceIntensive,
    /// RunInstances: 5 tokens, refilling 2/s.
    RunInstances,
    /// TerminateInstances: 100 tokens, refilling 5/s.
    TerminateInstances,
    /// CreateTags: 100 tokens, refilling 10/s.
    CreateTags,
    /// CloudWatch's GetMetricData: 50 transactions per second per region, answered `Throttling`
    /// beyond ("CloudWatch service quotas", docs.aws.amazon.com/AmazonCloudWatch/latest/
    /// monitoring/cloudwatch_limits.html: "For operations that do not include Metrics Insights
    /// queries, the quota is 50 TPS per Region"). Modelled as 50 tokens refilling 50/s. Not one
    /// of EC2's buckets, so not in [`ThrottleClass::ALL`].
    GetMetricData,
    /// SSM Parameter Store's standard throughput: 40 transactions per second per account and
    /// region, shared by GetParameter, GetParameters and GetParametersByPath, answered
    /// `ThrottlingException` beyond ("AWS Systems Manager endpoints and quotas",
    /// docs.aws.amazon.com/general/latest/gr/ssm.html, Parameter Store "Max throughput
    /// (transactions per second)": "Default throughput: 40"). Modelled as 40 tokens refilling
    /// 40/s. Not one of EC2's buckets, so not in [`ThrottleClass::ALL`].
    GetParameter,
}

impl ThrottleClass {
    /// Every one of EC2's classes (CloudWatch's [`ThrottleClass::GetMetricData`] is apart).
    pub const ALL: [ThrottleClass; 6] = [
        ThrottleClass::NonMutating,
        ThrottleClass::Mutating,
        ThrottleClass::ResourceIntensive,
        ThrottleClass::RunInstances,
        ThrottleClass::TerminateInstances,
        ThrottleClass::CreateTags,
    ];

    /// The bucket's size in tokens.
    pub fn capacity(self) -> u32 {
        match self {
            ThrottleClass::NonMutating => 100,
            ThrottleClass::Mutating => 50,
            ThrottleClass::ResourceIntensive => 50,
            ThrottleClass::RunInstances => 5,
            ThrottleClass::TerminateInstances => 100,
            ThrottleClass::GetMetricData => 50,
            ThrottleClass::CreateTags => 100,
            ThrottleClass::GetParameter => 40,
        }
    }

    /// Tokens added per second.
    pub fn refill_per_s(self) -> u32 {
        match self {
            ThrottleClass::NonMutating => 20,
            ThrottleClass::Mutating => 5,
            ThrottleClass::ResourceIntensive => 5,
            ThrottleClass::RunInstances => 2,
            ThrottleClass::TerminateInstances => 5,
            ThrottleClass::GetMetricData => 50,
            ThrottleClass::CreateTags => 10,
            ThrottleClass::GetParameter => 40,
        }
    }
}

/// RunInstances' second bucket, counted in instances rather than requests: 1,000 instances,
/// refilling 2 per second.
pub const RUN_INSTANCES_RESOURCE_CAPACITY: u32 = 1_000;
/// Refill of RunInstances' instance bucket, instances per second.
pub const RUN_INSTANCES_RESOURCE_REFILL_PER_S: u32 = 2;
/// TerminateInstances' second bucket, counted in instances terminated rather than requests:
/// 1,000 instances, refilling 20 per second ("Request throttling for the Amazon EC2 API",
/// resource token buckets).
pub const TERMINATE_INSTANCES_RESOURCE_CAPACITY: u32 = 1_000;
/// Refill of TerminateInstances' instance bucket, instances per second.
pub const TERMINATE_INSTANCES_RESOURCE_REFILL_PER_S: u32 = 20;

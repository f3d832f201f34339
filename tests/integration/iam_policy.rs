//! The IAM policy operators give the bridge (`docs/iam-policy.json`), checked against AWS's own
//! lists of EC2, CloudWatch, (Parameter Store's) SSM and DynamoDB actions, resource types and
//! condition keys (`tests/data/iam-*.txt`,
//! taken from the Service Authorization Reference; each file names its source), and against the
//! calls the backend makes (`Operation::ALL`) and those a bridge makes on its ledger's table
//! (`ledger_dynamodb::DYNAMODB_ACTIONS`, itself checked against the SDK calls in
//! `crates/ledger-dynamodb/src`).
//!
//! moto does not enforce IAM and CI has no AWS account, so nothing else tells us that the
//! document is written in names IAM knows, grants every call the backend makes, and grants
//! nothing more. Each check is a function returning the problems it found; every check is also
//! run on a policy broken its way, to show that it can fail.

use std::collections::{BTreeMap, BTreeSet};

use aws_backend::OWNER_TAG;
use aws_backend::port::Operation;
use serde_json::{Value, json};

const POLICY_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/iam-policy.json");
const ACTIONS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/iam-actions.txt");
const RESOURCE_TYPES_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/iam-resource-types.txt");
const CONDITION_KEYS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/iam-condition-keys.txt");
const LEDGER_DYNAMODB_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crates/ledger-dynamodb/src");

/// What a bridge calls on its ledger's table. The actions are `ledger-dynamodb`'s, which only
/// the `sdk` feature builds (as CI and the default do); without it the DynamoDB statement goes
/// unchecked against the code.
#[cfg(feature = "sdk")]
const DYNAMODB_ACTIONS: &[&str] = ledger_dynamodb::DYNAMODB_ACTIONS;
#[cfg(not(feature = "sdk"))]
const DYNAMODB_ACTIONS: &[&str] = &[];

/// Actions the policy must never grant, with the reason.
const FORBIDDEN_ACTIONS: [(&str, &str); 1] = [(
    "ec2:DescribeInstanceAttribute",
    "it reads any instance's user data, which holds a host key under `host_keys = \"user_data\"`",
)];

/// IAM's condition operators, before the `ForAllValues:`/`ForAnyValue:` qualifiers and the
/// `IfExists` suffix. Source: IAM User Guide, "IAM JSON policy elements: Condition operators"
/// (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html).
const CONDITION_OPERATORS: [&str; 27] = [
    "StringEquals",
    "StringNotEquals",
    "StringEqualsIgnoreCase",
    "StringNotEqualsIgnoreCase",
    "StringLike",
    "StringNotLike",
    "NumericEquals",
    "NumericNotEquals",
    "NumericLessThan",
    "NumericLessThanEquals",
    "NumericGreaterThan",
    "NumericGreaterThanEquals",
    "DateEquals",
    "DateNotEquals",
    "DateLessThan",
    "DateLessThanEquals",
    "DateGreaterThan",
    "DateGreaterThanEquals",
    "Bool",
    "BinaryEquals",
    "IpAddress",
    "NotIpAddress",
    "ArnEquals",
    "ArnLike",
    "ArnNotEquals",
    "ArnNotLike",
    "Null",
];

/// The IAM action a port operation needs.
fn iam_action(op: Operation) -> String {
    match op {
        // The port's one CloudWatch call: GetMetricData for NetworkIn and NetworkOut.
        Operation::GetNetworkUsage => "cloudwatch:GetMetricData".into(),
        // SSM's GetParameter, for AMI aliases.
        Operation::GetParameter => "ssm:GetParameter".into(),
        // Every other operation is the EC2 API call of the same name, and IAM's EC2 action is
        // named after its API call.
        other => format!("ec2:{}", other.name()),
    }
}

// ------------------------------------------------------------------------- the reference

/// One action of the reference.
#[derive(Debug)]
struct ActionInfo {
    /// Resource types it can be restricted to, with whether each is required.
    resource_types: Vec<(String, bool)>,
    /// Condition keys of the action itself (beyond its resource types').
    keys: Vec<String>,
}

/// One resource type of the reference.
#[derive(Debug)]
struct ResourceType {
    /// The ARN's resource part up to its variable, e.g. `key-pair/`.
    resource_prefix: String,
    /// The ARN's whole resource part, e.g. `table/${TableName}/index/${IndexName}`: DynamoDB's
    /// table, index and stream share their prefix `table/`.
    resource_format: String,
    /// Whether its ARNs name an account (an AMI's do not: `arn:aws:ec2:region::image/ami-...`).
    has_account: bool,
    /// Condition keys that apply to it.
    keys: Vec<String>,
}

/// AWS's lists, as shipped in `tests/data`.
#[derive(Debug)]
struct Reference {
    /// By action, e.g. `ec2:RunInstances`.
    actions: BTreeMap<String, ActionInfo>,
    /// By service prefix and type name.
    resource_types: BTreeMap<(String, String), ResourceType>,
    /// Key patterns, each with where it is defined: `global`, `ec2` or `cloudwatch`.
    condition_keys: Vec<(String, String)>,
}

/// The data lines of a `tests/data` file, split at tabs, each with its line number.
fn data_rows(path: &str, columns: usize) -> Vec<(usize, Vec<String>)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|(index, line)| {
            let fields: Vec<String> = line.split('\t').map(str::to_string).collect();
            assert_eq!(fields.len(), columns, "{path} line {}: expected {columns} tab-separated columns", index + 1);
            (index + 1, fields)
        })
        .collect()
}

/// A comma-separated list, where `-` is empty.
fn list(field: &str) -> Vec<String> {
    if field == "-" { Vec::new() } else { field.split(',').map(str::to_string).collect() }
}

fn reference() -> Reference {
    let mut actions = BTreeMap::new();
    for (line, f) in data_rows(ACTIONS_PATH, 4) {
        let resource_types = list(&f[2])
            .into_iter()
            .map(|t| match t.strip_suffix('*') {
                Some(required) => (required.to_string(), true),
                None => (t, false),
            })
            .collect();
        let previous = actions.insert(f[0].clone(), ActionInfo { resource_types, keys: list(&f[3]) });
        assert!(previous.is_none(), "{ACTIONS_PATH} line {line}: {} listed twice", f[0]);
    }
    let mut resource_types = BTreeMap::new();
    for (line, f) in data_rows(RESOURCE_TYPES_PATH, 4) {
        // `arn:${Partition}:ec2:${Region}:${Account}:key-pair/${KeyPairName}`: six colon-separated
        // parts, the last of which may hold colons of its own.
        let parts: Vec<&str> = f[2].splitn(6, ':').collect();
        assert_eq!(parts.len(), 6, "{RESOURCE_TYPES_PATH} line {line}: {} is not an ARN format", f[2]);
        let resource_prefix = parts[5].split("${").next().unwrap_or_default().to_string();
        let resource_format = parts[5].to_string();
        let has_account = !parts[4].is_empty();
        resource_types.insert(
            (f[0].clone(), f[1].clone()),
            ResourceType { resource_prefix, resource_format, has_account, keys: list(&f[3]) },
        );
    }
    let condition_keys =
        data_rows(CONDITION_KEYS_PATH, 2).into_iter().map(|(_, f)| (f[0].clone(), f[1].clone())).collect();
    Reference { actions, resource_types, condition_keys }
}

impl Reference {
    /// The resource types of `action` that `resources` name (all of them for `*`).
    fn types_named(&self, action: &str, resources: &[String]) -> Vec<String> {
        let Some(info) = self.actions.get(action) else { return Vec::new() };
        let service = service_of(action);
        info.resource_types
            .iter()
            .map(|(t, _)| t.clone())
            .filter(|t| resources.iter().any(|r| r == "*" || self.resource_type_of(service, r).as_deref() == Some(t)))
            .collect()
    }

    /// The resource type an ARN (pattern) names, by its resource part.
    fn resource_type_of(&self, service: &str, arn: &str) -> Option<String> {
        let resource = arn.splitn(6, ':').nth(5)?;
        self.resource_types
            .iter()
            .filter(|((s, _), t)| {
                s == service && !t.resource_prefix.is_empty() && resource.starts_with(&t.resource_prefix)
            })
            .max_by_key(|(_, t)| (t.resource_prefix.len(), fits_format(&t.resource_format, resource)))
            .map(|((_, name), _)| name.clone())
    }

    /// True when condition `key` may be used for `action` on `resources`: a global key, a key of
    /// the action itself, or a key of one of the resource types the statement names.
    fn key_applies(&self, key: &str, action: &str, resources: &[String]) -> bool {
        let global =
            self.condition_keys.iter().any(|(pattern, origin)| origin == "global" && key_matches(pattern, key));
        let Some(info) = self.actions.get(action) else { return global };
        let service = service_of(action);
        let of_types = self
            .types_named(action, resources)
            .into_iter()
            .filter_map(|t| self.resource_types.get(&(service.to_string(), t)))
            .flat_map(|t| t.keys.iter());
        global || info.keys.iter().chain(of_types).any(|pattern| key_matches(pattern, key))
    }
}

/// True when an ARN's resource part has the segments of a resource type's format: as many
/// `/`-separated segments, the literal ones equal (`${...}` stands for any segment).
fn fits_format(format: &str, resource: &str) -> bool {
    let (format, resource): (Vec<&str>, Vec<&str>) = (format.split('/').collect(), resource.split('/').collect());
    format.len() == resource.len() && format.iter().zip(&resource).all(|(f, r)| f.contains("${") || f == r)
}

fn service_of(action: &str) -> &str {
    action.split(':').next().unwrap_or_default()
}

/// True when `key` fits `pattern`, in which `${...}` stands for any non-empty text. Key names
/// are compared without regard to case, as IAM does; the variable part keeps its case.
fn key_matches(pattern: &str, key: &str) -> bool {
    let Some((prefix, rest)) = pattern.split_once("${") else { return pattern.eq_ignore_ascii_case(key) };
    let suffix = rest.split_once('}').map_or("", |(_, s)| s);
    key.len() > prefix.len() + suffix.len()
        && key.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        && key.get(key.len() - suffix.len()..).is_some_and(|s| s.eq_ignore_ascii_case(suffix))
}

// ---------------------------------------------------------------------------- the policy

/// One statement of the policy.
#[derive(Debug)]
struct Statement {
    sid: String,
    actions: Vec<String>,
    resources: Vec<String>,
    /// (operator, key, values).
    conditions: Vec<(String, String, Vec<String>)>,
}

fn policy_json() -> Value {
    let text = std::fs::read_to_string(POLICY_PATH).unwrap_or_else(|e| panic!("reading {POLICY_PATH}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{POLICY_PATH} is not JSON: {e}"))
}

/// A string, or a non-empty array of strings, as IAM takes `Action`, `Resource` and condition
/// values.
fn strings(value: &Value, what: &str) -> Result<Vec<String>, String> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| format!("{what}: {v} is not a string")))
            .collect(),
        other => Err(format!("{what}: {other} is neither a string nor a non-empty array of strings")),
    }
}

/// The statements of a policy document, or every way its structure is wrong: the version,
/// Allow-only statements with a unique Sid, Action(s) and Resource(s), and conditions that map
/// operators to keys to values.
fn statements(policy: &Value) -> Result<Vec<Statement>, Vec<String>> {
    let mut problems = Vec::new();
    if policy.get("Version") != Some(&json!("2012-10-17")) {
        problems.push(format!("Version is {:?}, not \"2012-10-17\"", policy.get("Version")));
    }
    if let Some(extra) =
        policy.as_object().and_then(|o| o.keys().find(|k| !matches!(k.as_str(), "Version" | "Statement")))
    {
        problems.push(format!("unexpected top-level element {extra}"));
    }
    let Some(raw) = policy.get("Statement").and_then(Value::as_array).filter(|s| !s.is_empty()) else {
        problems.push("Statement is not a non-empty array".into());
        return Err(problems);
    };
    let mut parsed = Vec::new();
    let mut sids = BTreeSet::new();
    for (index, raw) in raw.iter().enumerate() {
        let sid = raw.get("Sid").and_then(Value::as_str).unwrap_or_default().to_string();
        let name = format!("statement {index} ({sid})");
        // A Sid names the statement in error messages and docs; IAM allows only letters and digits.
        if sid.is_empty() || !sid.bytes().all(|b| b.is_ascii_alphanumeric()) || !sids.insert(sid.clone()) {
            problems.push(format!("{name}: Sid must be present, unique and alphanumeric"));
        }
        if let Some(extra) = raw.as_object().and_then(|o| {
            o.keys().find(|k| !matches!(k.as_str(), "Sid" | "Effect" | "Action" | "Resource" | "Condition"))
        }) {
            // NotAction, NotResource and Principal grant by exclusion or belong to resource
            // policies: nothing this policy should need.
            problems.push(format!("{name}: unexpected element {extra}"));
        }
        if raw.get("Effect") != Some(&json!("Allow")) {
            problems.push(format!("{name}: Effect is {:?}, not \"Allow\"", raw.get("Effect")));
        }
        let actions = raw.get("Action").map_or(Err(format!("{name}: no Action")), |v| strings(v, &name));
        let resources = raw.get("Resource").map_or(Err(format!("{name}: no Resource")), |v| strings(v, &name));
        let mut conditions = Vec::new();
        if let Some(condition) = raw.get("Condition") {
            match condition.as_object() {
                Some(operators) if !operators.is_empty() => {
                    for (operator, keys) in operators {
                        match keys.as_object() {
                            Some(keys) if !keys.is_empty() => {
                                for (key, values) in keys {
                                    match strings(values, &format!("{name} {operator} {key}")) {
                                        Ok(values) => conditions.push((operator.clone(), key.clone(), values)),
                                        Err(e) => problems.push(e),
                                    }
                                }
                            }
                            _ => problems.push(format!("{name}: {operator} does not map keys to values")),
                        }
                    }
                }
                _ => problems.push(format!("{name}: Condition is not a non-empty object")),
            }
        }
        match (actions, resources) {
            (Ok(actions), Ok(resources)) => parsed.push(Statement { sid, actions, resources, conditions }),
            (actions, resources) => problems.extend(actions.err().into_iter().chain(resources.err())),
        }
    }
    if problems.is_empty() { Ok(parsed) } else { Err(problems) }
}

// ---------------------------------------------------------------------------- the checks

/// Actions that are wildcards, unknown to AWS's list, or forbidden.
fn action_problems(statements: &[Statement], reference: &Reference) -> Vec<String> {
    let mut problems = Vec::new();
    for s in statements {
        for action in &s.actions {
            if action.contains(['*', '?']) {
                problems.push(format!("{}: {action} is a wildcard: list the actions the backend calls", s.sid));
            } else if !reference.actions.contains_key(action) {
                problems.push(format!("{}: {action} is not in {ACTIONS_PATH}", s.sid));
            }
            if let Some((_, why)) = FORBIDDEN_ACTIONS.iter().find(|(a, _)| a.eq_ignore_ascii_case(action)) {
                problems.push(format!("{}: {action} must not be granted: {why}", s.sid));
            }
        }
    }
    problems
}

/// The difference between what the policy grants and what `Operation::ALL` and a bridge's
/// ledger table (`DYNAMODB_ACTIONS`) call.
fn coverage_problems(statements: &[Statement]) -> Vec<String> {
    let granted: BTreeSet<&str> = statements.iter().flat_map(|s| s.actions.iter().map(String::as_str)).collect();
    let mut needed: BTreeMap<String, String> =
        Operation::ALL.iter().map(|op| (iam_action(*op), format!("Operation::{op:?}"))).collect();
    needed.extend(DYNAMODB_ACTIONS.iter().map(|a| (a.to_string(), "ledger_dynamodb::DYNAMODB_ACTIONS".to_string())));
    let mut problems: Vec<String> = needed
        .iter()
        .filter(|(action, _)| !granted.contains(action.as_str()))
        .map(|(action, caller)| format!("{caller} needs {action}, which no statement grants"))
        .collect();
    problems.extend(
        granted
            .iter()
            .filter(|a| !needed.contains_key(**a))
            .filter(|a| cfg!(feature = "sdk") || !a.starts_with("dynamodb:"))
            .map(|a| {
                format!(
                    "{a} is granted but no Operation calls it, nor a bridge on its ledger table \
                     (ledger_dynamodb::DYNAMODB_ACTIONS): remove it, or add the operation"
                )
            }),
    );
    problems
}

/// The IAM actions of the DynamoDB calls in `ledger-dynamodb`'s source: each client call
/// (`.client().update_item()`, `self.client.scan()`: UpdateItem, Scan), the waiter
/// (`wait_until_table_exists`: DescribeTable), and each item of a transaction
/// (`ConditionCheck::builder()`: ConditionCheckItem), which IAM authorises in place of the
/// transaction itself.
fn dynamodb_calls_in(source: &str) -> BTreeSet<String> {
    let flat: String = source.chars().filter(|c| !c.is_whitespace()).collect();
    let mut found = BTreeSet::new();
    for marker in [".client().", ".client."] {
        for (at, _) in flat.match_indices(marker) {
            let rest = &flat[at + marker.len()..];
            let method: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !rest[method.len()..].starts_with('(') || method.is_empty() {
                continue;
            }
            let action = match method.as_str() {
                "wait_until_table_exists" => "DescribeTable".to_string(),
                // Authorised as the items it carries, found below.
                "transact_write_items" => continue,
                snake => snake.split('_').map(|w| w[..1].to_ascii_uppercase() + &w[1..]).collect(),
            };
            found.insert(format!("dynamodb:{action}"));
        }
    }
    for (item, action) in [
        ("ConditionCheck", "ConditionCheckItem"),
        ("Put", "PutItem"),
        ("Delete", "DeleteItem"),
        ("Update", "UpdateItem"),
    ] {
        let marker = format!("{item}::builder(");
        let used = flat
            .match_indices(&marker)
            .any(|(at, _)| !flat[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'));
        if used {
            found.insert(format!("dynamodb:{action}"));
        }
    }
    found
}

/// Condition operators and keys IAM does not know, keys that do not apply to the statement's
/// actions, and owner-tag conditions that name another tag or disagree on the owner.
fn condition_problems(statements: &[Statement], reference: &Reference) -> Vec<String> {
    let mut problems = Vec::new();
    let mut owners = BTreeSet::new();
    for s in statements {
        for (operator, key, values) in &s.conditions {
            let base = operator
                .trim_start_matches("ForAllValues:")
                .trim_start_matches("ForAnyValue:")
                .trim_end_matches("IfExists");
            if !CONDITION_OPERATORS.contains(&base) {
                problems.push(format!("{}: {operator} is not an IAM condition operator", s.sid));
            }
            if !reference.condition_keys.iter().any(|(pattern, _)| key_matches(pattern, key)) {
                problems.push(format!("{}: {key} is neither a global nor an EC2 or CloudWatch condition key", s.sid));
                continue;
            }
            for action in &s.actions {
                if !reference.key_applies(key, action, &s.resources) {
                    problems.push(format!("{}: {key} does not apply to {action} on {:?}", s.sid, s.resources));
                }
            }
            if let Some((_, tag)) = key.split_once("Tag/") {
                if tag != OWNER_TAG {
                    problems.push(format!("{}: {key} conditions on {tag}, not on the owner tag {OWNER_TAG}", s.sid));
                }
                owners.extend(values.iter().cloned());
            }
        }
    }
    if owners.len() > 1 {
        problems.push(format!("the owner-tag conditions name several owners {owners:?}: one bridge, one owner"));
    }
    problems
}

/// Resources that are neither `*` nor a well-formed ARN (pattern) of a resource type the
/// reference knows, resource types none of the statement's actions take, and actions none of
/// the statement's resources applies to.
fn resource_problems(statements: &[Statement], reference: &Reference) -> Vec<String> {
    let mut problems = Vec::new();
    let is_region = |r: &str| {
        r == "*"
            || (r.len() <= 32
                && r.contains('-')
                && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
    };
    let is_account = |a: &str| a == "*" || (a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()));
    for s in statements {
        for arn in s.resources.iter().filter(|r| *r != "*") {
            let parts: Vec<&str> = arn.splitn(6, ':').collect();
            let [prefix, partition, service, region, account, resource] = parts[..] else {
                problems.push(format!("{}: {arn} is not arn:partition:service:region:account:resource", s.sid));
                continue;
            };
            if prefix != "arn" || partition != "aws" || !matches!(service, "ec2" | "cloudwatch" | "ssm" | "dynamodb") {
                problems.push(format!(
                    "{}: {arn} must start arn:aws:ec2:, arn:aws:cloudwatch:, arn:aws:ssm: or arn:aws:dynamodb:",
                    s.sid
                ));
                continue;
            }
            if !is_region(region) {
                problems.push(format!("{}: {arn}: {region:?} is neither * nor a region name", s.sid));
            }
            let Some(kind) = reference.resource_type_of(service, arn) else {
                problems.push(format!(
                    "{}: {arn}: {resource:?} is no {service} resource type of {RESOURCE_TYPES_PATH}",
                    s.sid
                ));
                continue;
            };
            let has_account =
                reference.resource_types.get(&(service.to_string(), kind.clone())).is_some_and(|t| t.has_account);
            // AWS's public parameters belong to no account: their ARNs leave it empty
            // ("Discovering public parameters in Parameter Store", AWS Systems Manager User
            // Guide, shows arn:aws:ssm:REGION::parameter/aws/service/...).
            let public_parameter = service == "ssm" && resource.starts_with("parameter/aws/service/");
            if has_account && !is_account(account) && !(public_parameter && account.is_empty()) {
                problems.push(format!("{}: {arn}: {account:?} is neither * nor a 12-digit account", s.sid));
            }
            if !has_account && !account.is_empty() {
                problems.push(format!(
                    "{}: {arn}: a {kind} ARN names no account (arn:aws:{service}:REGION::{resource})",
                    s.sid
                ));
            }
            if !resource.contains(['/', ':']) || resource.ends_with(['/', ':']) {
                problems.push(format!("{}: {arn}: {resource:?} names no {kind}", s.sid));
            }
            if !s.actions.iter().any(|a| reference.types_named(a, std::slice::from_ref(arn)).contains(&kind)) {
                problems.push(format!("{}: none of {:?} takes a {kind} resource ({arn})", s.sid, s.actions));
            }
        }
        for action in &s.actions {
            let takes_any =
                s.resources.iter().any(|r| r == "*") || !reference.types_named(action, &s.resources).is_empty();
            if reference.actions.contains_key(action) && !takes_any {
                problems.push(format!(
                    "{}: {action} takes none of {:?}: the statement grants it nothing",
                    s.sid, s.resources
                ));
            }
        }
    }
    problems
}

/// Required resource types of granted actions that no statement granting the action names, so
/// that IAM would refuse every call.
fn required_resource_problems(statements: &[Statement], reference: &Reference) -> Vec<String> {
    let mut problems = Vec::new();
    let granted: BTreeSet<&String> = statements.iter().flat_map(|s| s.actions.iter()).collect();
    for action in granted {
        let Some(info) = reference.actions.get(action) else { continue };
        for (kind, _) in info.resource_types.iter().filter(|(_, required)| *required) {
            let covered = statements
                .iter()
                .filter(|s| s.actions.contains(action))
                .any(|s| reference.types_named(action, &s.resources).contains(kind));
            if !covered {
                problems.push(format!("{action} requires a {kind} resource, which no statement granting it names"));
            }
        }
    }
    problems
}

/// Every problem of every check.
fn all_problems(policy: &Value, reference: &Reference) -> Vec<String> {
    match statements(policy) {
        Err(problems) => problems,
        Ok(s) => [
            action_problems(&s, reference),
            coverage_problems(&s),
            condition_problems(&s, reference),
            resource_problems(&s, reference),
            required_resource_problems(&s, reference),
        ]
        .concat(),
    }
}

// ----------------------------------------------------------------------------- the tests

fn assert_none(problems: Vec<String>) {
    assert!(problems.is_empty(), "{POLICY_PATH}:\n  {}", problems.join("\n  "));
}

fn shipped() -> (Vec<Statement>, Reference) {
    match statements(&policy_json()) {
        Ok(s) => (s, reference()),
        Err(problems) => panic!("{POLICY_PATH}:\n  {}", problems.join("\n  ")),
    }
}

#[test]
fn the_policy_is_a_well_formed_allow_only_document() {
    let (statements, _) = shipped();
    assert!(statements.len() >= 2, "{statements:?}");
}

#[test]
fn every_action_is_a_named_ec2_or_cloudwatch_action() {
    let (statements, reference) = shipped();
    assert_none(action_problems(&statements, &reference));
}

#[test]
fn the_policy_grants_exactly_the_calls_of_every_operation() {
    let (statements, _) = shipped();
    assert_none(coverage_problems(&statements));
}

#[test]
fn every_condition_uses_a_real_operator_and_a_key_that_applies() {
    let (statements, reference) = shipped();
    assert_none(condition_problems(&statements, &reference));
}

#[test]
fn every_resource_is_star_or_a_well_formed_arn_its_actions_take() {
    let (statements, reference) = shipped();
    assert_none(resource_problems(&statements, &reference));
}

#[test]
fn every_required_resource_of_a_granted_action_is_granted() {
    let (statements, reference) = shipped();
    assert_none(required_resource_problems(&statements, &reference));
}

#[cfg(feature = "sdk")]
#[test]
fn the_ledger_table_is_granted_exactly_what_ledger_dynamodb_calls_on_it() {
    // Given every DynamoDB call in ledger-dynamodb's source.
    let mut called = BTreeSet::new();
    for entry in std::fs::read_dir(LEDGER_DYNAMODB_SRC).unwrap_or_else(|e| panic!("{LEDGER_DYNAMODB_SRC}: {e}")) {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            called.extend(dynamodb_calls_in(&text));
        }
    }
    // Then each is the bridge's or the operator's, and each listed action is called.
    let listed: BTreeSet<String> = ledger_dynamodb::DYNAMODB_ACTIONS
        .iter()
        .chain(ledger_dynamodb::OPERATOR_ACTIONS)
        .map(|a| a.to_string())
        .collect();
    assert_eq!(
        called, listed,
        "the DynamoDB calls in {LEDGER_DYNAMODB_SRC} and ledger_dynamodb's DYNAMODB_ACTIONS and OPERATOR_ACTIONS differ: \
         list each call's action in ledger-dynamodb/src/iam.rs (and grant the bridge's in docs/iam-policy.json)"
    );
    assert!(ledger_dynamodb::DYNAMODB_ACTIONS.iter().all(|a| !ledger_dynamodb::OPERATOR_ACTIONS.contains(a)));
    // And the policy's table statement grants the bridge's, on the table alone.
    let (statements, _) = shipped();
    let table = statements.iter().find(|s| s.sid == "UsageLedgerTable").expect("a UsageLedgerTable statement");
    let granted: BTreeSet<&str> = table.actions.iter().map(String::as_str).collect();
    assert_eq!(granted, ledger_dynamodb::DYNAMODB_ACTIONS.iter().copied().collect::<BTreeSet<_>>());
    assert!(table.resources.iter().all(|r| r.starts_with("arn:aws:dynamodb:") && r.contains(":table/")), "{table:?}");
    let elsewhere: Vec<&Statement> = statements
        .iter()
        .filter(|s| s.sid != table.sid && s.actions.iter().any(|a| a.starts_with("dynamodb:")))
        .collect();
    assert!(elsewhere.is_empty(), "DynamoDB actions outside UsageLedgerTable: {elsewhere:?}");
}

#[test]
fn the_dynamodb_call_scanner_sees_client_calls_waiters_and_transaction_items() {
    let source = r#"
        let out = self
            .client()
            .update_item()
            .table_name(self.name());
        self.client.wait_until_table_exists().table_name(&self.name);
        let sent = self.client.transact_write_items().send().await;
        let check = ConditionCheck::builder().table_name(&self.name);
        let put = Put::builder().item(PK, pk);
        let not_ours = InputPut::builder();
        let field = self.client; // not a call
    "#;
    let found = dynamodb_calls_in(source);
    let expected = ["dynamodb:UpdateItem", "dynamodb:DescribeTable", "dynamodb:ConditionCheckItem", "dynamodb:PutItem"];
    assert_eq!(found, expected.iter().map(|a| a.to_string()).collect::<BTreeSet<_>>());
}

#[test]
fn the_reference_data_holds_the_actions_and_keys_the_policy_relies_on() {
    // The data files are only evidence if they hold real entries: spot-check a few with what
    // the Service Authorization Reference says about them.
    let reference = reference();
    let delete = &reference.actions["ec2:DeleteKeyPair"];
    assert!(delete.resource_types.contains(&("key-pair".to_string(), false)), "{delete:?}");
    let console = &reference.actions["ec2:GetConsoleOutput"];
    assert_eq!(console.resource_types, [("instance".to_string(), true)]);
    assert!(reference.actions["ec2:DescribeInstances"].resource_types.is_empty());
    assert!(reference.actions["cloudwatch:GetMetricData"].resource_types.is_empty());
    assert_eq!(reference.actions["ssm:GetParameter"].resource_types, [("parameter".to_string(), true)]);
    assert!(reference.resource_types[&("ssm".to_string(), "parameter".to_string())].has_account);
    assert!(reference.actions["ec2:CreateTags"].keys.iter().any(|k| k == "ec2:CreateAction"));
    assert!(!reference.resource_types[&("ec2".to_string(), "image".to_string())].has_account);
    assert!(reference.key_applies("aws:ResourceTag/compute-bridge:owner", "ec2:DeleteKeyPair", &["*".into()]));
    assert!(!reference.key_applies("aws:ResourceTag/compute-bridge:owner", "ec2:DescribeInstances", &["*".into()]));
    assert!(reference.key_applies("aws:SourceIp", "ec2:DescribeInstances", &["*".into()]));
    assert_eq!(reference.actions["dynamodb:ConditionCheckItem"].resource_types, [("table".to_string(), true)]);
    assert!(!reference.actions.contains_key("dynamodb:TransactWriteItems"), "IAM authorises a transaction's items");
    assert_eq!(
        reference.resource_type_of("dynamodb", "arn:aws:dynamodb:*:*:table/compute-bridge-ledger").as_deref(),
        Some("table")
    );
    assert_eq!(
        reference.resource_type_of("dynamodb", "arn:aws:dynamodb:*:*:table/t/index/i").as_deref(),
        Some("index")
    );
    assert!(key_matches("aws:RequestTag/${TagKey}", "aws:requesttag/compute-bridge:owner"));
    assert!(!key_matches("aws:RequestTag/${TagKey}", "aws:RequestTag/"));
}

/// The shipped policy with `edit` applied to its statement `sid`.
fn broken(sid: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut policy = policy_json();
    let statement = policy["Statement"]
        .as_array_mut()
        .and_then(|all| all.iter_mut().find(|s| s["Sid"] == sid))
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no statement {sid} in {POLICY_PATH}"));
    edit(statement);
    policy
}

/// Asserts that the checks find a problem mentioning `needle` in `policy`.
fn assert_caught(policy: &Value, needle: &str) {
    let problems = all_problems(policy, &reference());
    assert!(problems.iter().any(|p| p.contains(needle)), "no problem mentions {needle:?}: {problems:#?}");
}

#[test]
fn each_check_fails_on_a_policy_broken_its_way() {
    assert_none(all_problems(&policy_json(), &reference()));

    // The seed's `ec2:Describe*`.
    assert_caught(
        &broken("DescribeWhatTheBridgeReads", |s| drop(s.insert("Action".into(), json!("ec2:Describe*")))),
        "wildcard",
    );
    // A Describe that reads user data.
    let with_attribute = broken("DescribeWhatTheBridgeReads", |s| {
        if let Some(actions) = s["Action"].as_array_mut() {
            actions.push(json!("ec2:DescribeInstanceAttribute"));
        }
    });
    assert_caught(&with_attribute, "must not be granted");
    assert_caught(&with_attribute, "no Operation calls it");
    // A misspelt action.
    assert_caught(
        &broken("ReadNetworkMetrics", |s| drop(s.insert("Action".into(), json!("cloudwatch:GetMetricsData")))),
        "is not in",
    );
    // An operation left out: GetConsoleOutput, the newest one.
    assert_caught(
        &broken("ReadOurConsoles", |s| drop(s.insert("Action".into(), json!("ec2:GetPasswordData")))),
        "Operation::GetConsoleOutput",
    );
    // A Deny, and a statement without a Resource.
    assert_caught(&broken("ReadNetworkMetrics", |s| drop(s.insert("Effect".into(), json!("Deny")))), "not \"Allow\"");
    assert_caught(&broken("ReadNetworkMetrics", |s| drop(s.remove("Resource"))), "no Resource");
    let mut wrong_version = policy_json();
    wrong_version["Version"] = json!("2008-10-17");
    assert_caught(&wrong_version, "2012-10-17");
    // A condition key that does not exist, one that exists but not for the action, a tag other
    // than the owner tag, and an operator IAM does not know.
    let condition = |operator: &str, key: &str| json!({ operator: { key: "bridge-prod-eu-1" } });
    assert_caught(
        &broken("ReadOurConsoles", |s| {
            drop(s.insert("Condition".into(), condition("StringEquals", "ec2:ResourceTags/compute-bridge:owner")))
        }),
        "neither a global",
    );
    assert_caught(
        &broken("DescribeWhatTheBridgeReads", |s| {
            drop(s.insert("Condition".into(), condition("StringEquals", "aws:ResourceTag/compute-bridge:owner")))
        }),
        "does not apply to ec2:DescribeInstances",
    );
    assert_caught(
        &broken("ReadOurConsoles", |s| {
            drop(s.insert("Condition".into(), condition("StringEquals", "aws:ResourceTag/owner")))
        }),
        "not on the owner tag",
    );
    assert_caught(
        &broken("ReadOurConsoles", |s| {
            drop(s.insert("Condition".into(), condition("StringEqual", "aws:ResourceTag/compute-bridge:owner")))
        }),
        "not an IAM condition operator",
    );
    // Malformed ARNs: an AMI with an account, a short account, a made-up type, a region that is
    // not one, a resource type the action does not take.
    let resource =
        |arn: &'static str| move |s: &mut serde_json::Map<String, Value>| drop(s.insert("Resource".into(), json!(arn)));
    assert_caught(&broken("ReadOurConsoles", resource("arn:aws:ec2:*:*:instances/*")), "no ec2 resource type");
    assert_caught(&broken("ReadOurConsoles", resource("arn:aws:ec2:*:1234:instance/*")), "12-digit account");
    assert_caught(&broken("ReadOurConsoles", resource("arn:aws:ec2:Europe:*:instance/*")), "region name");
    assert_caught(&broken("ReadOurConsoles", resource("arn:aws:ec2:*:*:instance/")), "names no instance");
    assert_caught(&broken("ReadOurConsoles", resource("arn:aws:ec2:*:*:key-pair/*")), "takes none of");
    assert_caught(&broken("ReadOurConsoles", resource("ec2:*:*:instance/*")), "arn:partition");
    assert_caught(
        &broken("LaunchFromImagesIntoTheDefaultVpc", |s| {
            s.insert(
                "Resource".into(),
                json!(["arn:aws:ec2:*:*:image/*", "arn:aws:ec2:*:*:subnet/*", "arn:aws:ec2:*:*:network-interface/*"]),
            );
        }),
        "names no account",
    );
    // SSM: a parameter ARN naming no parameter, and an account-less ARN outside AWS's public
    // parameters.
    assert_caught(&broken("ResolvePublicAmiAliases", resource("arn:aws:ssm:*::parameter/")), "names no parameter");
    assert_caught(
        &broken("ResolvePublicAmiAliases", resource("arn:aws:ssm:*::parameter/golden-ami")),
        "12-digit account",
    );
    assert_caught(
        &broken("ResolvePublicAmiAliases", |s| drop(s.insert("Action".into(), json!("ssm:GetParameters")))),
        "Operation::GetParameter",
    );
    // The ledger table: the transaction itself (not an IAM action), an action the bridge calls
    // left out, one it does not call, and an index where the table belongs.
    let ledger_actions =
        |actions: Value| move |s: &mut serde_json::Map<String, Value>| drop(s.insert("Action".into(), actions));
    assert_caught(
        &broken("UsageLedgerTable", |s| {
            if let Some(actions) = s["Action"].as_array_mut() {
                actions.push(json!("dynamodb:TransactWriteItems"));
            }
        }),
        "dynamodb:TransactWriteItems is not in",
    );
    if cfg!(feature = "sdk") {
        let without_delete = json!([
            "dynamodb:UpdateItem",
            "dynamodb:GetItem",
            "dynamodb:Scan",
            "dynamodb:BatchGetItem",
            "dynamodb:ConditionCheckItem",
            "dynamodb:PutItem"
        ]);
        assert_caught(
            &broken("UsageLedgerTable", ledger_actions(without_delete)),
            "DYNAMODB_ACTIONS needs dynamodb:DeleteItem",
        );
        assert_caught(
            &broken("UsageLedgerTable", |s| {
                if let Some(actions) = s["Action"].as_array_mut() {
                    actions.push(json!("dynamodb:BatchWriteItem"));
                }
            }),
            "dynamodb:BatchWriteItem is granted but no Operation calls it",
        );
    }
    assert_caught(
        &broken("UsageLedgerTable", resource("arn:aws:dynamodb:*:*:table/compute-bridge-ledger/index/by-pos")),
        "takes none of",
    );
    // RunInstances without its required subnet.
    assert_caught(
        &broken("LaunchFromImagesIntoTheDefaultVpc", |s| {
            s.insert("Resource".into(), json!(["arn:aws:ec2:*::image/*", "arn:aws:ec2:*:*:network-interface/*"]));
        }),
        "requires a subnet resource",
    );
}

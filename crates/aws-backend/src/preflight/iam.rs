//! EC2's answers to a `DryRun` call sorted ([`classify`]), and the statements of the shipped
//! policy (`docs/iam-policy.json`, embedded) that grant an action, to name in a refusal.

use super::Outcome;
use crate::port::Ec2Error;

/// The policy operators give the bridge, as shipped in `docs/iam-policy.json`.
pub const POLICY_JSON: &str = include_str!("../../../../docs/iam-policy.json");

/// The owner the shipped policy is written for; a refusal's statement names the configured one.
const POLICY_EXAMPLE_OWNER: &str = "bridge-prod-eu-1";

/// What an answer to a call sent with `DryRun` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `DryRunOperation`: the call would have been allowed.
    Allowed,
    /// `UnauthorizedOperation` (EC2), or `AccessDenied` (moto's IAM, and other services): the
    /// credentials may not make the call.
    Refused,
    /// The credentials themselves were refused (unknown key, bad signature, expired token).
    BadCredentials,
    /// Anything else: EC2 refused the request before it looked at the permission.
    Other,
}

/// Sorts an answer by its code.
pub fn classify(err: &Ec2Error) -> Answer {
    match err.code.as_str() {
        "DryRunOperation" => Answer::Allowed,
        "UnauthorizedOperation" | "Client.UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException" => {
            Answer::Refused
        }
        "AuthFailure"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "InvalidAccessKeyId"
        | "ExpiredToken"
        | "RequestExpired" => Answer::BadCredentials,
        _ => Answer::Other,
    }
}

/// The statements of the shipped policy whose `Action` names `action` (exactly or by a
/// wildcard), each as its `Sid` and its JSON with `owner` in place of the example owner.
pub fn statements_granting(action: &str, owner: &str) -> Vec<(String, String)> {
    let Ok(policy) = serde_json::from_str::<serde_json::Value>(POLICY_JSON) else {
        return Vec::new();
    };
    let statements = policy["Statement"].as_array().cloned().unwrap_or_default();
    statements
        .into_iter()
        .filter(|statement| {
            let actions: Vec<&str> = match &statement["Action"] {
                serde_json::Value::String(one) => vec![one.as_str()],
                serde_json::Value::Array(many) => many.iter().filter_map(|a| a.as_str()).collect(),
                _ => Vec::new(),
            };
            actions.iter().any(|granted| matches(granted, action))
        })
        .map(|statement| {
            let sid = statement["Sid"].as_str().unwrap_or("(no Sid)").to_string();
            let text = statement.to_string().replace(POLICY_EXAMPLE_OWNER, owner);
            (sid, text)
        })
        .collect()
}

/// The statements of the shipped policy that grant `action`, named: `statement X of
/// docs/iam-policy.json` (or `statements X, Y ...`).
pub(super) fn statement_names(action: &str) -> String {
    let sids: Vec<String> = statements_granting(action, POLICY_EXAMPLE_OWNER).into_iter().map(|(sid, _)| sid).collect();
    match sids.as_slice() {
        [] => "no statement of docs/iam-policy.json grants it".to_string(),
        [one] => format!("statement {one} of docs/iam-policy.json"),
        many => format!("statements {} of docs/iam-policy.json", many.join(", ")),
    }
}

/// IAM's action match: case-insensitive, `*` for any run of characters.
fn matches(pattern: &str, action: &str) -> bool {
    let (pattern, action) = (pattern.to_ascii_lowercase(), action.to_ascii_lowercase());
    match pattern.split_once('*') {
        None => pattern == action,
        Some((head, tail)) => {
            action.len() >= head.len() + tail.len() && action.starts_with(head) && action.ends_with(tail)
        }
    }
}

/// The finding for `action`, from EC2's answer to its dry run.
pub(super) fn judge(action: &str, err: &Ec2Error, owner: &str) -> (Outcome, String) {
    match classify(err) {
        Answer::Allowed => (Outcome::Passed, "allowed (DryRunOperation)".to_string()),
        Answer::Refused => {
            let statements = statements_granting(action, owner);
            let fix = if statements.is_empty() {
                format!("grant {action} (docs/iam-policy.json names no statement for it)")
            } else {
                let sids: Vec<&str> = statements.iter().map(|(sid, _)| sid.as_str()).collect();
                let texts: Vec<&str> = statements.iter().map(|(_, text)| text.as_str()).collect();
                format!(
                    "add the statement{} {} of docs/iam-policy.json to the bridge's policy: {}",
                    if sids.len() == 1 { "" } else { "s" },
                    sids.join(", "),
                    texts.join(" ")
                )
            };
            (Outcome::Failed, format!("refused ({}): {fix}", err.code))
        }
        Answer::BadCredentials => {
            (Outcome::Failed, format!("the credentials were refused ({err}): check [credentials] or the AWS chain"))
        }
        Answer::Other => (
            Outcome::Unchecked,
            format!(
                "EC2 answered {} before looking at the permission ({}); a run's first grant finds out",
                err.code, err.message
            ),
        ),
    }
}

//! The preflight's sorting of answers and its reading of the shipped policy.

use super::*;

fn answer(code: &str) -> Ec2Error {
    Ec2Error::new(Operation::RunInstances, code, "message")
}

#[test]
fn dry_run_answers_are_sorted_by_code() {
    assert_eq!(classify(&answer("DryRunOperation")), Answer::Allowed);
    assert_eq!(classify(&answer("UnauthorizedOperation")), Answer::Refused);
    assert_eq!(classify(&answer("AccessDenied")), Answer::Refused);
    assert_eq!(classify(&answer("AuthFailure")), Answer::BadCredentials);
    assert_eq!(classify(&answer("InvalidInstanceID.NotFound")), Answer::Other);
}

#[test]
fn a_refusal_names_the_action_the_statement_and_the_configured_owner() {
    let (outcome, detail) = iam::judge("ec2:TerminateInstances", &answer("UnauthorizedOperation"), "my-bridge");
    assert_eq!(outcome, Outcome::Failed);
    assert!(detail.contains("EndOnlyWhatIsOurs"), "{detail}");
    assert!(detail.contains("\"my-bridge\"") && !detail.contains("bridge-prod-eu-1"), "{detail}");
    let (outcome, _) = iam::judge("ec2:TerminateInstances", &answer("DryRunOperation"), "my-bridge");
    assert_eq!(outcome, Outcome::Passed);
    let (outcome, detail) = iam::judge("ec2:DeleteKeyPair", &answer("InvalidKeyPair.NotFound"), "my-bridge");
    assert_eq!(outcome, Outcome::Unchecked);
    assert!(detail.contains("InvalidKeyPair.NotFound"), "{detail}");
}

#[test]
fn every_mutating_call_of_a_dry_run_has_a_statement_in_the_shipped_policy() {
    for op in [
        Operation::RunInstances,
        Operation::CreateSecurityGroup,
        Operation::AuthorizeSecurityGroupIngress,
        Operation::ImportKeyPair,
        Operation::CreateTags,
        Operation::TerminateInstances,
        Operation::DeleteSecurityGroup,
        Operation::DeleteKeyPair,
    ] {
        let action = format!("ec2:{}", op.name());
        assert!(!statements_granting(&action, "o").is_empty(), "{action} has no statement");
    }
    assert!(statements_granting("ec2:RebootInstances", "o").is_empty());
}

#[test]
fn create_tags_is_named_by_its_statement() {
    assert_eq!(iam::statement_names("ec2:CreateTags"), "statement TagOnlyWhileCreating of docs/iam-policy.json");
    assert_eq!(iam::statement_names("ec2:RebootInstances"), "no statement of docs/iam-policy.json grants it");
}

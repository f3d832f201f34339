//! The self-test can fail: with a checker switched off, the deliberate bug it exists to catch
//! goes unseen and `cargo xtask sim --self-test` reports the case as failed.

use tests::checkers::names;
use tests::scenario::Breakage;
use tests::selftest::{SEEDS, Setting, run_case};

fn case_passes(breakage: Breakage, disabled: &[&str]) -> bool {
    let disabled: Vec<String> = disabled.iter().map(ToString::to_string).collect();
    let result = run_case(Some(breakage), Setting::for_breakage(breakage), false, SEEDS[0], &disabled)
        .unwrap_or_else(|e| panic!("run failed: {e:#}"));
    result.passed && result.clause_fired
}

#[test]
fn the_self_test_fails_when_the_metering_checker_is_disabled() {
    assert!(case_passes(Breakage::Overbill, &[]), "the overbill case must pass with every checker on");
    assert!(!case_passes(Breakage::Overbill, &[names::METERING]), "an over-bill went unseen, yet the case passed");
}

#[test]
fn the_self_test_fails_when_the_deadline_checker_is_disabled() {
    assert!(case_passes(Breakage::TerminateLate, &[]), "the terminate-late case must pass with every checker on");
    assert!(
        !case_passes(Breakage::TerminateLate, &[names::DEADLINE]),
        "a late termination went unseen, yet the case passed"
    );
}

#[test]
fn the_self_test_fails_when_the_early_end_checker_is_disabled() {
    assert!(case_passes(Breakage::TerminateEarly, &[]));
    assert!(!case_passes(Breakage::TerminateEarly, &[names::EARLY_END]));
}

#[test]
fn every_checker_has_a_breakage_that_it_catches() {
    for checker in names::ALL {
        assert!(
            Breakage::ALL.iter().any(|b| b.caught_by() == checker),
            "no deliberate bug proves `{checker}` can fail"
        );
    }
}

#[test]
fn every_breakage_names_a_checker_that_exists() {
    for b in Breakage::ALL {
        assert!(names::ALL.contains(&b.caught_by()), "{b:?}");
        assert!(b.also_plausible().iter().all(|c| names::ALL.contains(c)), "{b:?}");
        assert_eq!(Breakage::from_name(b.name()), Some(b));
    }
}

//! Given / when / then tests of `apply` for every event and every impossible transition, and
//! of the ledger's append contract.

#![allow(clippy::unwrap_used)]

use backend_api::{AlmanacTick, GrantId, UsageMetrics};

use crate::{
    ApplyError, Event, GrantState, Impossible, Ledger, LedgerError, NetworkFigure, NetworkStatus, ObservedState, Phase,
    Record, ResourceKind, TerminationReason, apply, fold,
};

const G: GrantId = GrantId([7; 32]);
const T0: u64 = 1_700_000_000_000;
const STORAGE: u64 = 8 << 30;

fn admitted() -> Event {
    Event::GrantAdmitted {
        region: "us-east-1".into(),
        instance_type: "t3.small".into(),
        vcpus: 2,
        memory_mib: 2048,
        storage_bytes: STORAGE,
        valid_to: AlmanacTick(100),
        valid_to_unix_ms: T0 + 3_600_000,
        key_name: "grant-k".into(),
        group_name: "grant-g".into(),
    }
}
fn key_imported() -> Event {
    Event::KeyPairImported { key_name: "grant-k".into(), key_pair_id: "key-1".into() }
}
fn group_created() -> Event {
    Event::SecurityGroupCreated { group_id: "sg-1".into(), group_name: "grant-g".into() }
}
fn launch_requested(token: &str) -> Event {
    Event::LaunchRequested {
        client_token: token.into(),
        instance_type: "t3.small".into(),
        image_id: Some("ami-0123456789abcdef0".into()),
    }
}
fn launched(id: &str, token: &str) -> Event {
    Event::InstanceLaunched {
        instance_id: id.into(),
        client_token: token.into(),
        instance_type: "t3.medium".into(),
        vcpus: 4,
        memory_mib: 4096,
    }
}
fn observed(id: &str, state: ObservedState, at: u64) -> Event {
    Event::InstanceStateObserved { instance_id: id.into(), state, observed_at_unix_ms: at }
}
fn sampled(id: &str, bytes_in: u64, bytes_out: u64) -> Event {
    Event::NetworkSampled {
        instance_id: id.into(),
        bytes_in,
        bytes_out,
        window_start_unix_ms: T0,
        window_end_unix_ms: T0 + 60_000,
    }
}
fn termination(reason: TerminationReason) -> Event {
    Event::TerminationRequested { reason }
}
fn terminated(id: &str) -> Event {
    Event::InstanceTerminated { instance_id: id.into() }
}
fn key_deleted() -> Event {
    Event::KeyPairDeleted { key_name: "grant-k".into() }
}
fn group_deleted() -> Event {
    Event::SecurityGroupDeleted { group_id: "sg-1".into() }
}
fn orphan() -> Event {
    Event::OrphanReaped { resource_kind: ResourceKind::KeyPair, resource_id: "key-9".into() }
}

/// Given these events of grant `G`, each at the given time, numbered from 0.
fn given(events: &[(u64, Event)]) -> Option<GrantState> {
    let records: Vec<Record> = events
        .iter()
        .enumerate()
        .map(|(seq, (at, event))| Record { grant: G, seq: seq as u64, at_unix_ms: *at, event: event.clone() })
        .collect();
    let mut grants = fold(&records).expect("the given history is valid");
    grants.remove(&G)
}

/// When `event` is applied at `at` with the grant's next sequence number.
fn when(state: &Option<GrantState>, at: u64, event: Event) -> Result<GrantState, ApplyError> {
    let seq = state.as_ref().map_or(0, GrantState::next_seq);
    apply(state.as_ref(), &Record { grant: G, seq, at_unix_ms: at, event })
}

fn impossible(result: Result<GrantState, ApplyError>) -> Impossible {
    *result.expect_err("the transition must be refused").kind
}

/// A grant running since `T0 + 10 s` on instance `i-1` (4 vCPUs, 4096 MiB).
fn running() -> Vec<(u64, Event)> {
    vec![
        (T0, admitted()),
        (T0 + 1_000, key_imported()),
        (T0 + 2_000, group_created()),
        (T0 + 3_000, launch_requested("tok-1")),
        (T0 + 4_000, launched("i-1", "tok-1")),
        (T0 + 5_000, observed("i-1", ObservedState::Pending, T0 + 5_000)),
        (T0 + 10_000, observed("i-1", ObservedState::Running, T0 + 10_000)),
    ]
}

/// The same grant with the instance gone after 100 s of running; key pair and group still held.
fn instance_gone() -> Vec<(u64, Event)> {
    let mut events = running();
    events.push((T0 + 110_000, termination(TerminationReason::Deadline)));
    events.push((T0 + 115_000, observed("i-1", ObservedState::ShuttingDown, T0 + 115_000)));
    events.push((T0 + 120_000, terminated("i-1")));
    events
}

fn cleaned_up() -> Vec<(u64, Event)> {
    let mut events = instance_gone();
    events.push((T0 + 121_000, key_deleted()));
    events.push((T0 + 122_000, group_deleted()));
    events
}

fn usage_for_seconds(seconds: u64) -> UsageMetrics {
    UsageMetrics { cpu_seconds: 4 * seconds, ram_mib_seconds: 4096 * seconds, network_bytes: 0, storage_bytes: STORAGE }
}

// ---- Every event, accepted ----

#[test]
fn grant_admitted_starts_a_grant() {
    let state = when(&None, T0, admitted()).unwrap();
    assert_eq!(state.phase(), Phase::Admitted);
    assert_eq!(state.next_seq(), 1);
    assert_eq!(state.region(), "us-east-1");
    assert_eq!(state.valid_to(), AlmanacTick(100));
    assert_eq!(state.valid_to_unix_ms(), T0 + 3_600_000);
    assert_eq!((state.key_name(), state.group_name()), ("grant-k", "grant-g"));
    assert_eq!(state.usage(), UsageMetrics::default());
    assert!(!state.holds_resources());
}

#[test]
fn key_pair_imported_is_held() {
    let state = when(&given(&[(T0, admitted())]), T0 + 1, key_imported()).unwrap();
    assert_eq!(state.phase(), Phase::Provisioning);
    assert_eq!(state.key_pair(), Some("key-1"));
    assert!(state.holds_resources());
}

#[test]
fn security_group_created_is_held() {
    let state = when(&given(&[(T0, admitted())]), T0 + 1, group_created()).unwrap();
    assert_eq!(state.phase(), Phase::Provisioning);
    assert_eq!(state.security_group(), Some("sg-1"));
    assert_eq!(state.held_resources(), vec![(ResourceKind::SecurityGroup, "sg-1")]);
}

#[test]
fn launch_requested_counts_as_possibly_holding_an_instance() {
    let state = when(&given(&[(T0, admitted())]), T0 + 1, launch_requested("tok-1")).unwrap();
    assert_eq!(state.phase(), Phase::Provisioning);
    assert_eq!(state.launch_requested(), Some("tok-1"));
    assert!(state.holds_resources(), "an instance may exist for the token");
    // A retry with a new token after a failed launch replaces it.
    let state = when(&Some(state), T0 + 2, launch_requested("tok-2")).unwrap();
    assert_eq!(state.launch_requested(), Some("tok-2"));
}

#[test]
fn instance_launched_is_held_and_meters_storage_with_the_launched_sizes() {
    let state =
        when(&given(&[(T0, admitted()), (T0, launch_requested("tok-1"))]), T0 + 1, launched("i-1", "tok-1")).unwrap();
    assert_eq!(state.phase(), Phase::Running);
    assert_eq!(state.instance(), Some("i-1"));
    assert_eq!(state.ever_launched(), ["i-1".to_string()]);
    assert_eq!(state.launched_size(), Some((4, 4096)));
    assert_eq!(state.usage(), usage_for_seconds(0), "storage counts once launched; no running time yet");
}

#[test]
fn instance_launched_again_with_the_same_id_changes_nothing_but_the_sequence() {
    let mut history = running();
    let before = given(&history);
    history.push((T0 + 20_000, launched("i-1", "tok-1")));
    let after = given(&history).unwrap();
    assert_eq!(after.instance(), Some("i-1"));
    assert_eq!(after.ever_launched().len(), 1);
    assert_eq!(after.next_seq(), before.unwrap().next_seq() + 1);
}

#[test]
fn instance_launched_during_rollback_is_recorded_so_it_can_be_removed() {
    let history =
        given(&[(T0, admitted()), (T0, launch_requested("tok-1")), (T0 + 1, termination(TerminationReason::Rollback))]);
    let state = when(&history, T0 + 2, launched("i-1", "tok-1")).unwrap();
    assert_eq!(state.phase(), Phase::Terminating);
    assert_eq!(state.instance(), Some("i-1"));
}

#[test]
fn running_observation_opens_a_period_billed_at_least_60_seconds() {
    let state = given(&running()).unwrap();
    assert_eq!(state.running_since_unix_ms(), Some(T0 + 10_000));
    assert_eq!(state.last_state(), Some(ObservedState::Running));
    assert_eq!(state.usage(), usage_for_seconds(60), "minimum 60 s");
    // The open period counts up to the latest timestamp seen.
    let state = when(&Some(state), T0 + 100_500, sampled("i-1", 0, 0)).unwrap();
    assert_eq!(state.usage(), usage_for_seconds(91), "90.5 s rounds up to 91");
}

#[test]
fn ever_running_is_set_by_the_first_running_period_and_stays_until_settlement() {
    let mut history = running();
    history.truncate(history.len() - 1);
    let pending = given(&history).unwrap();
    assert!(!pending.ever_running(), "launched and pending: no period opened yet");
    let state = when(&Some(pending), T0 + 10_000, observed("i-1", ObservedState::Running, T0 + 10_000)).unwrap();
    assert!(state.ever_running());
    let state = when(&Some(state), T0 + 20_000, observed("i-1", ObservedState::Stopped, T0 + 20_000)).unwrap();
    assert!(state.ever_running(), "a closed period still counts");
    let mut settled = cleaned_up();
    settled.push((T0 + 123_000, Event::GrantSettled { usage: usage_for_seconds(100) }));
    assert!(!given(&settled).unwrap().ever_running(), "a settled grant has no live part");
}

#[test]
fn every_stopping_state_closes_the_period() {
    for stop in
        [ObservedState::ShuttingDown, ObservedState::Terminated, ObservedState::Stopping, ObservedState::Stopped]
    {
        let state = when(&given(&running()), T0 + 200_000, observed("i-1", stop, T0 + 130_000)).unwrap();
        assert_eq!(state.running_since_unix_ms(), None, "{stop:?}");
        assert_eq!(state.usage(), usage_for_seconds(120), "{stop:?}: the observation time ends it");
        // Later events do not extend a closed period.
        let state = when(&Some(state), T0 + 900_000, sampled("i-1", 1, 1)).unwrap();
        assert_eq!(state.usage().cpu_seconds, 4 * 120);
    }
}

#[test]
fn a_second_running_period_is_billed_separately_with_its_own_minimum() {
    let mut history = running();
    history.push((T0 + 20_000, observed("i-1", ObservedState::Stopped, T0 + 20_000)));
    history.push((T0 + 30_000, observed("i-1", ObservedState::Running, T0 + 30_000)));
    history.push((T0 + 35_000, observed("i-1", ObservedState::Stopping, T0 + 35_000)));
    assert_eq!(given(&history).unwrap().usage(), usage_for_seconds(120));
}

#[test]
fn network_samples_add_up() {
    let state = when(&given(&running()), T0 + 20_000, sampled("i-1", 100, 23)).unwrap();
    let state = when(&Some(state), T0 + 21_000, sampled("i-1", 7, 0)).unwrap();
    assert_eq!(state.usage().network_bytes, 130);
    // A late sample after the instance is gone still counts.
    let state = when(&given(&instance_gone()), T0 + 130_000, sampled("i-1", 5, 5)).unwrap();
    assert_eq!(state.usage().network_bytes, 10);
}

fn measured(id: &str, bytes_in: u64, bytes_out: u64, complete: bool) -> Event {
    Event::NetworkMeasured {
        instance_id: id.into(),
        bytes_in,
        bytes_out,
        window_start_unix_ms: T0,
        window_end_unix_ms: T0 + 120_000,
        complete,
    }
}

fn network_unknown(id: &str) -> Event {
    Event::NetworkUnknown { instance_id: id.into(), window_start_unix_ms: T0, window_end_unix_ms: T0 + 120_000 }
}

/// A grant settled with a provisional network figure of 100 bytes for `i-1`.
fn settled_provisional() -> Vec<(u64, Event)> {
    let mut events = instance_gone();
    events.insert(events.len() - 1, (T0 + 119_000, measured("i-1", 60, 40, false)));
    events.push((T0 + 121_000, key_deleted()));
    events.push((T0 + 122_000, group_deleted()));
    let mut usage = usage_for_seconds(100);
    usage.network_bytes = 100;
    events.push((T0 + 123_000, Event::GrantSettled { usage }));
    events
}

#[test]
fn a_later_network_figure_replaces_the_earlier_one() {
    let state = when(&given(&running()), T0 + 20_000, measured("i-1", 100, 23, false)).unwrap();
    assert_eq!(state.usage().network_bytes, 123);
    assert_eq!(state.network_status(), NetworkStatus::Provisional);
    let state = when(&Some(state), T0 + 21_000, measured("i-1", 150, 50, true)).unwrap();
    assert_eq!(state.usage().network_bytes, 200, "replaced, not added");
    assert_eq!(state.network_status(), NetworkStatus::Complete);
    assert!(state.network_pending().is_empty());
}

#[test]
fn an_unknown_figure_is_billed_zero_until_measured_and_never_forgets_a_known_one() {
    let state = when(&given(&instance_gone()), T0 + 121_000, network_unknown("i-1")).unwrap();
    assert_eq!((state.usage().network_bytes, state.network_status()), (0, NetworkStatus::Unknown));
    let pending = state.network_pending();
    assert_eq!((pending.len(), pending[0].region.as_str()), (1, "us-east-1"));
    assert_eq!(pending[0].figure, NetworkFigure::Unknown);
    let state = when(&Some(state), T0 + 122_000, measured("i-1", 1, 2, false)).unwrap();
    let state = when(&Some(state), T0 + 123_000, network_unknown("i-1")).unwrap();
    assert_eq!((state.usage().network_bytes, state.network_status()), (3, NetworkStatus::Provisional));
}

#[test]
fn a_complete_figure_amends_a_settled_grant_once() {
    let settled = given(&settled_provisional());
    let state = settled.clone().unwrap();
    assert_eq!((state.usage().network_bytes, state.network_status()), (100, NetworkStatus::Provisional));
    assert_eq!(state.network_pending()[0].window_end_unix_ms, T0 + 120_000);
    // A provisional figure cannot amend a settled grant.
    assert_eq!(impossible(when(&settled, T0 + 200_000, measured("i-1", 1, 1, false))), Impossible::AfterSettlement);
    let amended = when(&settled, T0 + 900_000, measured("i-1", 70, 50, true)).unwrap();
    assert_eq!(amended.usage(), UsageMetrics { network_bytes: 120, ..usage_for_seconds(100) });
    assert_eq!(amended.network_status(), NetworkStatus::Complete);
    assert!(amended.is_settled());
    // Complete: nothing may amend it again, and nothing else is kept for it.
    assert_eq!(
        impossible(when(&Some(amended), T0 + 901_000, measured("i-1", 1, 1, true))),
        Impossible::AfterSettlement
    );
}

#[test]
fn a_retried_grant_bills_each_instance_network_once() {
    let mut history = settled_provisional();
    let settled = given(&history).unwrap();
    // The first attempt failed with a retryable error before it settled.
    let settle_at = history.len() - 1;
    history.insert(settle_at, (T0 + 122_500, Event::ProvisionFailed { retryable: true }));
    history.push((T0 + 130_000, admitted().retried(1)));
    history.push((T0 + 131_000, launch_requested("tok-2")));
    history.push((T0 + 132_000, launched("i-2", "tok-2")));
    history.push((T0 + 133_000, measured("i-2", 5, 5, true)));
    history.push((T0 + 134_000, measured("i-1", 200, 0, true)));
    let state = given(&history).unwrap();
    assert_eq!(settled.usage().network_bytes, 100);
    assert_eq!(state.usage().network_bytes, 210, "i-1's complete 200 replaces its provisional 100; i-2 adds 10");
}

#[test]
fn deadline_termination_stops_the_clock_and_no_later_running_reopens_it() {
    let state = when(&given(&running()), T0 + 70_000, termination(TerminationReason::Deadline)).unwrap();
    assert_eq!(state.phase(), Phase::Terminating);
    assert_eq!(state.termination(), Some(TerminationReason::Deadline));
    assert_eq!(state.usage(), usage_for_seconds(60));
    let state = when(&Some(state), T0 + 90_000, observed("i-1", ObservedState::Running, T0 + 90_000)).unwrap();
    assert_eq!(state.running_since_unix_ms(), None);
    assert_eq!(state.usage(), usage_for_seconds(60));
}

#[test]
fn other_terminations_leave_the_period_open_until_the_instance_stops() {
    for reason in [TerminationReason::Exited, TerminationReason::Operator, TerminationReason::Rollback] {
        let state = when(&given(&running()), T0 + 70_000, termination(reason)).unwrap();
        assert_eq!(state.phase(), Phase::Terminating);
        assert_eq!(state.termination(), Some(reason));
        assert_eq!(state.running_since_unix_ms(), Some(T0 + 10_000), "{reason:?}");
    }
}

#[test]
fn instance_terminated_releases_it_and_closes_the_period() {
    let mut history = running();
    history.push((T0 + 200_000, terminated("i-1")));
    let state = given(&history).unwrap();
    assert_eq!(state.instance(), None);
    assert_eq!(state.phase(), Phase::Terminating);
    assert_eq!(state.usage(), usage_for_seconds(190));
}

#[test]
fn key_pair_and_group_deletions_release_them() {
    let state = when(&given(&instance_gone()), T0 + 121_000, key_deleted()).unwrap();
    assert_eq!(state.key_pair(), None);
    let state = when(&Some(state), T0 + 122_000, group_deleted()).unwrap();
    assert_eq!(state.security_group(), None);
    assert!(!state.holds_resources());
}

#[test]
fn grant_settled_compacts_to_the_final_usage() {
    let usage = usage_for_seconds(100);
    let state = when(&given(&cleaned_up()), T0 + 123_000, Event::GrantSettled { usage }).unwrap();
    assert_eq!(state.phase(), Phase::Settled);
    assert_eq!(state.usage(), usage);
    assert_eq!((state.region(), state.ever_launched().len()), ("", 0), "details are dropped");
}

#[test]
fn a_grant_that_never_launched_settles_with_zero_usage() {
    let history = given(&[(T0, admitted()), (T0 + 1, termination(TerminationReason::Rollback))]);
    let state = when(&history, T0 + 2, Event::GrantSettled { usage: UsageMetrics::default() }).unwrap();
    assert!(state.is_settled());
}

#[test]
fn orphan_reaped_is_allowed_for_settled_and_unknown_grants() {
    let mut history = cleaned_up();
    history.push((T0 + 123_000, Event::GrantSettled { usage: usage_for_seconds(100) }));
    let state = when(&given(&history), T0 + 200_000, orphan()).unwrap();
    assert_eq!(state.usage(), usage_for_seconds(100));
    let unknown = when(&None, T0, orphan()).unwrap();
    assert!(unknown.is_settled());
    assert_eq!(unknown.usage(), UsageMetrics::default());
    assert_eq!(unknown.next_seq(), 1);
}

#[test]
fn timestamps_going_backwards_are_clamped_to_the_latest_seen() {
    let mut history = running();
    // A restart with a clock 50 s behind: the observation and record times are clamped.
    history.push((T0 + 100_000, sampled("i-1", 0, 0)));
    history.push((T0 + 50_000, observed("i-1", ObservedState::Stopped, T0 + 40_000)));
    let state = given(&history).unwrap();
    assert_eq!(state.latest_unix_ms(), T0 + 100_000);
    assert_eq!(state.usage(), usage_for_seconds(90), "closed at the clamped time, not earlier");
}

// ---- Every impossible transition ----

#[test]
fn an_event_for_an_unknown_grant_is_refused() {
    assert_eq!(impossible(when(&None, T0, key_imported())), Impossible::UnknownGrant);
}

#[test]
fn admitting_twice_is_refused() {
    assert_eq!(impossible(when(&given(&[(T0, admitted())]), T0, admitted())), Impossible::AlreadyAdmitted);
}

#[test]
fn a_sequence_gap_is_refused() {
    let state = given(&[(T0, admitted())]);
    let record = Record { grant: G, seq: 2, at_unix_ms: T0, event: key_imported() };
    assert_eq!(*apply(state.as_ref(), &record).unwrap_err().kind, Impossible::SequenceGap { expected: 1 });
    let first = Record { grant: G, seq: 1, at_unix_ms: T0, event: admitted() };
    assert_eq!(*apply(None, &first).unwrap_err().kind, Impossible::SequenceGap { expected: 0 });
}

#[test]
fn any_event_but_orphan_reaped_after_settlement_is_refused() {
    let mut history = cleaned_up();
    history.push((T0 + 123_000, Event::GrantSettled { usage: usage_for_seconds(100) }));
    let settled = given(&history);
    for event in [launched("i-2", "tok-1"), termination(TerminationReason::Operator), key_deleted(), admitted()] {
        assert_eq!(impossible(when(&settled, T0 + 200_000, event)), Impossible::AfterSettlement);
    }
}

#[test]
fn provisioning_after_termination_is_refused() {
    let terminating = given(&[(T0, admitted()), (T0, termination(TerminationReason::Operator))]);
    for event in [key_imported(), launch_requested("tok-1")] {
        assert!(matches!(
            impossible(when(&terminating, T0, event)),
            Impossible::WrongPhase { phase: Phase::Terminating, .. }
        ));
    }
}

#[test]
fn a_teardown_may_record_a_group_it_found_by_name_and_then_its_deletion() {
    // Given a grant being torn down whose group creation was never recorded (a crash between
    // CreateSecurityGroup and the record),
    let terminating = given(&[(T0, admitted()), (T0, termination(TerminationReason::Rollback))]);
    // when the teardown records the group it found by name,
    let found = when(&terminating, T0, group_created()).expect("adopting a found group is allowed");
    // then the grant holds it and stays Terminating, and its deletion can follow.
    assert_eq!(found.phase(), Phase::Terminating);
    assert_eq!(found.security_group(), Some("sg-1"));
    let deleted = when(&Some(found), T0, Event::SecurityGroupDeleted { group_id: "sg-1".into() }).expect("deletion");
    assert!(deleted.security_group().is_none());
}

#[test]
fn names_other_than_the_admitted_ones_are_refused() {
    let state = given(&[(T0, admitted())]);
    let wrong_key = Event::KeyPairImported { key_name: "other".into(), key_pair_id: "key-1".into() };
    assert!(matches!(impossible(when(&state, T0, wrong_key)), Impossible::KeyNameMismatch { .. }));
    let wrong_group = Event::SecurityGroupCreated { group_id: "sg-1".into(), group_name: "other".into() };
    assert!(matches!(impossible(when(&state, T0, wrong_group)), Impossible::GroupNameMismatch { .. }));
}

#[test]
fn a_second_key_pair_or_group_is_refused() {
    let state = given(&[(T0, admitted()), (T0, key_imported()), (T0, group_created())]);
    assert_eq!(
        impossible(when(&state, T0, key_imported())),
        Impossible::KeyPairAlreadyHeld { key_pair_id: "key-1".into() }
    );
    assert_eq!(
        impossible(when(&state, T0, group_created())),
        Impossible::SecurityGroupAlreadyHeld { group_id: "sg-1".into() }
    );
}

#[test]
fn a_launch_request_after_a_launch_is_refused() {
    assert_eq!(
        impossible(when(&given(&running()), T0, launch_requested("tok-2"))),
        Impossible::AlreadyLaunched { instance_id: "i-1".into() }
    );
}

#[test]
fn a_launch_without_its_request_is_refused() {
    let state = given(&[(T0, admitted()), (T0, launch_requested("tok-1"))]);
    assert_eq!(
        impossible(when(&state, T0, launched("i-1", "tok-2"))),
        Impossible::LaunchNotRequested { client_token: "tok-2".into(), requested: Some("tok-1".into()) }
    );
    assert!(matches!(
        impossible(when(&given(&[(T0, admitted())]), T0, launched("i-1", "tok-1"))),
        Impossible::LaunchNotRequested { requested: None, .. }
    ));
}

#[test]
fn a_second_instance_is_refused() {
    assert_eq!(
        impossible(when(&given(&running()), T0, launched("i-2", "tok-1"))),
        Impossible::SecondInstance { first: "i-1".into(), found: "i-2".into() }
    );
    // Also after the first one is gone.
    assert!(matches!(
        impossible(when(&given(&instance_gone()), T0, launched("i-2", "tok-1"))),
        Impossible::SecondInstance { .. }
    ));
}

#[test]
fn observing_or_terminating_an_instance_not_held_is_refused() {
    let state = given(&running());
    let not_held = Impossible::InstanceNotHeld { instance_id: "i-9".into(), held: Some("i-1".into()) };
    assert_eq!(impossible(when(&state, T0, observed("i-9", ObservedState::Running, T0))), not_held);
    assert_eq!(impossible(when(&state, T0, terminated("i-9"))), not_held);
    let gone = given(&instance_gone());
    assert_eq!(
        impossible(when(&gone, T0, terminated("i-1"))),
        Impossible::InstanceNotHeld { instance_id: "i-1".into(), held: None }
    );
}

#[test]
fn a_sample_of_an_instance_never_launched_is_refused() {
    assert_eq!(
        impossible(when(&given(&running()), T0, sampled("i-9", 1, 1))),
        Impossible::InstanceNeverLaunched { instance_id: "i-9".into() }
    );
}

#[test]
fn a_sample_window_ending_before_it_starts_is_refused() {
    let backwards = Event::NetworkSampled {
        instance_id: "i-1".into(),
        bytes_in: 1,
        bytes_out: 1,
        window_start_unix_ms: T0 + 10,
        window_end_unix_ms: T0,
    };
    assert!(matches!(impossible(when(&given(&running()), T0, backwards)), Impossible::BackwardsWindow { .. }));
}

#[test]
fn deleting_what_is_not_held_is_refused() {
    let state = given(&[(T0, admitted())]);
    assert_eq!(
        impossible(when(&state, T0, key_deleted())),
        Impossible::KeyPairNotHeld { key_name: "grant-k".into(), held: None }
    );
    assert_eq!(
        impossible(when(&state, T0, group_deleted())),
        Impossible::SecurityGroupNotHeld { group_id: "sg-1".into(), held: None }
    );
}

#[test]
fn settling_while_holding_resources_is_refused() {
    let kind = impossible(when(&given(&instance_gone()), T0, Event::GrantSettled { usage: usage_for_seconds(100) }));
    assert!(matches!(&kind, Impossible::StillHolding { resources } if resources.len() == 2), "{kind:?}");
}

#[test]
fn settling_with_another_usage_is_refused() {
    let kind = impossible(when(&given(&cleaned_up()), T0, Event::GrantSettled { usage: usage_for_seconds(99) }));
    assert_eq!(kind, Impossible::UsageMismatch { recorded: usage_for_seconds(99), computed: usage_for_seconds(100) });
}

#[test]
fn reaping_an_orphan_of_a_live_grant_is_refused() {
    assert_eq!(
        impossible(when(&given(&running()), T0, orphan())),
        Impossible::OrphanOfLiveGrant { phase: Phase::Running }
    );
}

#[test]
fn a_refused_step_leaves_the_state_unchanged() {
    let mut state = given(&running()).unwrap();
    let before = state.clone();
    let record = Record { grant: G, seq: state.next_seq(), at_unix_ms: T0 + 999_999, event: launched("i-2", "tok-1") };
    assert!(state.step(&record).is_err());
    assert_eq!(state, before);
}

#[test]
fn errors_name_the_grant_sequence_and_value() {
    let err = when(&given(&running()), T0, terminated("i-9")).unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&G.to_hex()) && message.contains("seq 7") && message.contains("i-9"), "{message}");
}

// ---- The ledger's append contract ----

#[test]
fn ledger_writes_nothing_for_an_impossible_event_or_a_failed_store() {
    let mut ledger = Ledger::in_memory();
    ledger.append(G, T0, admitted()).unwrap();
    let hash = ledger.records_hash();
    let err = ledger.append(G, T0, terminated("i-1")).unwrap_err();
    assert!(matches!(err, LedgerError::Apply(_)));
    ledger.store().fail_next_appends(1);
    assert!(matches!(ledger.append(G, T0, key_imported()).unwrap_err(), LedgerError::Store(_)));
    assert_eq!(ledger.store().records().len(), 1);
    assert_eq!(ledger.records_hash(), hash);
    assert_eq!(ledger.grant(&G).unwrap().next_seq(), 1);
    // The same event succeeds once the store recovers, with the next sequence number.
    assert_eq!(ledger.append(G, T0, key_imported()).unwrap().next_seq(), 2);
}

#[test]
fn ledger_queries_and_restart() {
    let mut ledger = Ledger::in_memory();
    let other = GrantId([9; 32]);
    for (at, event) in cleaned_up() {
        ledger.append(G, at, event).unwrap();
    }
    ledger.append(other, T0, admitted()).unwrap();
    assert_eq!(ledger.live_grants().count(), 2);
    let usage = ledger.usage(&G).unwrap();
    ledger.append(G, T0 + 130_000, Event::GrantSettled { usage }).unwrap();
    assert_eq!(ledger.live_grants().map(|(id, _)| *id).collect::<Vec<_>>(), vec![other]);
    assert_eq!(ledger.total_usage(), usage);
    assert_eq!(ledger.usage(&GrantId([1; 32])), None);
    let restarted = Ledger::reopen_memory(ledger.store().clone()).unwrap();
    assert_eq!(restarted.records_hash(), ledger.records_hash());
    assert_eq!(restarted.grant(&G), ledger.grant(&G));
    assert_eq!(restarted.record_count(), 14);
}

#[test]
fn ledger_batches_are_all_or_nothing() {
    let mut ledger = Ledger::in_memory();
    let err = ledger.append_batch([(G, T0, admitted()), (G, T0, key_imported()), (G, T0, terminated("i-1"))]);
    assert!(matches!(err, Err(LedgerError::Apply(e)) if e.seq == 2));
    assert!(ledger.grant(&G).is_none());
    assert!(ledger.store().records().is_empty());
    ledger.append_batch([(G, T0, admitted()), (G, T0, key_imported())]).unwrap();
    assert_eq!(ledger.grant(&G).unwrap().key_pair(), Some("key-1"));
    assert_eq!(ledger.store().records().len(), 2);
}

#[test]
fn billing_capped_closes_the_period_at_its_time_not_at_the_record_time() {
    // Given a grant running since T0 + 10 s, whose bridge was down at the deadline (T0 + 1 h),
    let mut events = running();
    // when it comes back six hours later and caps billing at the deadline before terminating,
    events.push((T0 + 7 * 3_600_000, Event::BillingCapped { at_unix_ms: T0 + 3_600_000 }));
    events.push((T0 + 7 * 3_600_000, termination(TerminationReason::Deadline)));
    let state = given(&events).unwrap();
    // then it is billed up to the deadline only,
    assert_eq!(state.usage().cpu_seconds, 4 * 3_590);
    // and no later running observation reopens the period.
    let later = when(&Some(state), T0 + 7 * 3_600_000 + 1, observed("i-1", ObservedState::Running, T0 + 7 * 3_600_000));
    assert_eq!(later.unwrap().usage().cpu_seconds, 4 * 3_590);
}

#[test]
fn billing_capped_needs_a_launched_instance() {
    let state = given(&[(T0, admitted())]);
    assert!(matches!(
        impossible(when(&state, T0 + 1, Event::BillingCapped { at_unix_ms: T0 })),
        Impossible::InstanceNeverLaunched { .. }
    ));
}

#[test]
fn launch_absent_resolves_the_pending_launch_and_only_that_one() {
    let state = given(&[(T0, admitted()), (T0 + 1, launch_requested("tok-1"))]).unwrap();
    assert!(state.holds_resources(), "a requested launch may exist");
    let wrong = when(&Some(state.clone()), T0 + 2, Event::LaunchAbsent { client_token: "tok-2".into() });
    assert!(matches!(impossible(wrong), Impossible::LaunchNotRequested { .. }));
    let resolved = when(&Some(state), T0 + 2, Event::LaunchAbsent { client_token: "tok-1".into() }).unwrap();
    assert!(!resolved.holds_resources());
    assert_eq!(resolved.launch_requested(), None);
}

#[test]
fn launch_absent_is_refused_once_an_instance_launched() {
    let state = given(&running());
    let refused = when(&state, T0 + 20_000, Event::LaunchAbsent { client_token: "tok-1".into() });
    assert!(matches!(impossible(refused), Impossible::LaunchNotRequested { .. }));
}

fn rules_3() -> Event {
    Event::BillingRulesAdopted { version: 3 }
}

/// A grant admitted under rules 3 (valid_to at T0 + 1 h), launched at T0 + 2 s.
fn under_rules_3() -> Vec<(u64, Event)> {
    vec![
        (T0, admitted()),
        (T0, rules_3()),
        (T0 + 1, key_imported()),
        (T0 + 1, group_created()),
        (T0 + 2_000, launch_requested("tok-1")),
        (T0 + 3_000, launched("i-1", "tok-1")),
    ]
}

#[test]
fn under_rules_3_a_period_closed_after_valid_to_is_billed_up_to_valid_to() {
    // Given a grant under rules 3 running since T0 + 10 s,
    let mut events = under_rules_3();
    events.push((T0 + 10_000, observed("i-1", ObservedState::Running, T0 + 10_000)));
    // when the reaper's teardown requests the termination three hours after the deadline,
    events.push((T0 + 4 * 3_600_000, termination(TerminationReason::Deadline)));
    let state = given(&events).unwrap();
    // then it is billed up to valid_to only.
    assert_eq!(state.usage().cpu_seconds, 4 * 3_590);
}

#[test]
fn under_rules_3_an_open_period_counts_up_to_valid_to_only() {
    let mut events = under_rules_3();
    events.push((T0 + 10_000, observed("i-1", ObservedState::Running, T0 + 10_000)));
    events.push((T0 + 5 * 3_600_000, observed("i-1", ObservedState::Running, T0 + 5 * 3_600_000)));
    let state = given(&events).unwrap();
    assert_eq!(state.usage().cpu_seconds, 4 * 3_590);
}

#[test]
fn under_rules_3_a_missed_run_opens_at_launch_time_before_the_grants_clock() {
    // Given a launch recorded hours after it happened (adopted by its token after a crash),
    let mut events = under_rules_3();
    events.truncate(5);
    events.push((T0 + 3 * 3_600_000, launched("i-1", "tok-1")));
    // when the bridge records the run from EC2's LaunchTime (T0 + 5 s),
    events.push((T0 + 3 * 3_600_000, observed("i-1", ObservedState::Running, T0 + 5_000)));
    events.push((T0 + 3 * 3_600_000 + 1_000, observed("i-1", ObservedState::ShuttingDown, T0 + 3 * 3_600_000 + 1_000)));
    let state = given(&events).unwrap();
    // then the period opens there, not at the record's time, and stops at valid_to.
    assert_eq!(state.usage().cpu_seconds, 4 * 3_595);
}

#[test]
fn under_rules_3_a_run_never_reaches_back_before_the_launch_request() {
    let mut events = under_rules_3();
    events.push((T0 + 20_000, observed("i-1", ObservedState::Running, T0 - 60_000)));
    events.push((T0 + 602_000, observed("i-1", ObservedState::ShuttingDown, T0 + 602_000)));
    let state = given(&events).unwrap();
    assert_eq!(state.usage().cpu_seconds, 4 * 600);
}

#[test]
fn without_rules_3_a_late_deadline_bills_as_recorded() {
    // An attempt recorded before rules 3 replays to what it settled: up to the record's time.
    let mut events = running();
    events.push((T0 + 4 * 3_600_000, termination(TerminationReason::Deadline)));
    let state = given(&events).unwrap();
    assert_eq!(state.usage().cpu_seconds, 4 * (4 * 3_600 - 10));
}

#[test]
fn billing_rules_come_with_the_admission_and_must_be_known() {
    let state = given(&[(T0, admitted())]);
    assert!(matches!(
        impossible(when(&state, T0, Event::BillingRulesAdopted { version: 4 })),
        Impossible::UnknownBillingRules { version: 4 }
    ));
    let launched = given(&under_rules_3());
    assert!(matches!(impossible(when(&launched, T0 + 4_000, rules_3())), Impossible::WrongPhase { .. }));
}

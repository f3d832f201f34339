//! The summary of a run: one JSON object, or a table for people.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;
use sim_ec2::FaultConfig;

use crate::checkers::{Measures, Severity, Violation};

/// Grant counts by outcome.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GrantCounts {
    /// Grants in the workload.
    pub total: u64,
    /// Grants the backend admitted (provision started creating things).
    pub admitted: u64,
    /// Grants refused before anything was created.
    pub refused: u64,
    /// Grants that ran to their end and were torn down by the bridge.
    pub completed: u64,
    /// Admitted grants whose provision failed (rolled back).
    pub provision_failed: u64,
    /// Grants in flight when a crash hit (finished by recovery).
    pub interrupted: u64,
    /// Grants settled in the ledger at the end.
    pub settled: u64,
}

/// Everything a run reports.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The seed.
    pub seed: u64,
    /// The fault mode flag.
    pub faults_mode: &'static str,
    /// The fault rates drawn for this seed.
    pub faults: FaultConfig,
    /// Grant counts.
    pub grants: GrantCounts,
    /// EC2 calls by operation, as the simulator received them.
    pub ec2_calls: BTreeMap<String, u64>,
    /// EC2's error answers by code (injected faults and ordinary lags alike), as the simulator
    /// gave them: where calls went to waste.
    pub ec2_errors: BTreeMap<String, u64>,
    /// All EC2 calls.
    pub ec2_calls_total: u64,
    /// Calls answered RequestLimitExceeded.
    pub throttles: u64,
    /// Retries by the backend, per error code.
    pub retries: BTreeMap<String, u64>,
    /// Faults injected by the simulator, per kind.
    pub faults_injected: BTreeMap<String, u64>,
    /// Backend crashes (with replicas: kills and pauses of the lease holder).
    pub crashes: u64,
    /// With replicas, how many times a process took the lease over from another.
    pub takeovers: u64,
    /// Resources with our owner tag still alive at the end.
    pub leaked_resources: u64,
    /// Figures the checkers measured.
    pub measures: Measures,
    /// Virtual time simulated, ms.
    pub virtual_ms: u64,
    /// Wall time taken, ms.
    pub wall_ms: u64,
    /// SHA-256 of the ledger's records.
    pub ledger_hash: String,
    /// The simulator's audit hash.
    pub audit_hash: String,
    /// Why provisions failed, by message (ids stripped), with counts.
    pub provision_errors: BTreeMap<String, u64>,
    /// Broken invariants.
    pub violations: Vec<Violation>,
}

impl Summary {
    /// The worst severity among the violations, if any.
    pub fn worst(&self) -> Option<Severity> {
        self.violations.iter().map(|v| v.severity).min()
    }

    /// A fingerprint of everything deterministic in the run.
    pub fn determinism_key(&self) -> String {
        format!("{}/{}", self.ledger_hash, self.audit_hash)
    }

    /// The summary as a table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let g = &self.grants;
        let m = &self.measures;
        let rows: Vec<(&str, String)> = vec![
            ("grants total / admitted / refused", format!("{} / {} / {}", g.total, g.admitted, g.refused)),
            (
                "completed / provision failed / interrupted",
                format!("{} / {} / {}", g.completed, g.provision_failed, g.interrupted),
            ),
            ("settled in ledger", g.settled.to_string()),
            ("EC2 calls", self.ec2_calls_total.to_string()),
            ("throttled calls", self.throttles.to_string()),
            ("backend retries", self.retries.values().sum::<u64>().to_string()),
            ("faults injected", self.faults_injected.values().sum::<u64>().to_string()),
            ("crashes", self.crashes.to_string()),
            ("lease takeovers", self.takeovers.to_string()),
            ("leaked resources", self.leaked_resources.to_string()),
            ("deadline overruns", m.deadline_overruns.to_string()),
            ("max termination lateness", format!("{} ms", m.termination_lateness_ms_max)),
            ("  ... where nothing touched it (bound 1 s)", format!("{} ms", m.termination_lateness_ms_max_unfaulted)),
            ("max metering error, billed seconds", format!("{} s", m.metering_error_seconds_max)),
            ("max metering error cpu", format!("{} cpu-s", m.metering_error_cpu_seconds_max)),
            ("max metering error ram", format!("{} MiB-s", m.metering_error_ram_mib_seconds_max)),
            ("max metering error network", format!("{} B", m.metering_error_network_bytes_max)),
            ("virtual time", format!("{:.1} h", self.virtual_ms as f64 / 3_600_000.0)),
            ("wall time", format!("{:.2} s", self.wall_ms as f64 / 1_000.0)),
            ("violations", self.violations.len().to_string()),
        ];
        for (name, value) in rows {
            let _ = writeln!(out, "  {name:<44} {value}");
        }
        let _ = writeln!(out, "  EC2 calls by operation:");
        for (op, n) in &self.ec2_calls {
            let _ = writeln!(out, "    {op:<42} {n}");
        }
        if !self.ec2_errors.is_empty() {
            let _ = writeln!(out, "  EC2 errors by code: {:?}", self.ec2_errors);
        }
        if !self.retries.is_empty() {
            let _ = writeln!(out, "  retries by code: {:?}", self.retries);
        }
        if !self.faults_injected.is_empty() {
            let _ = writeln!(out, "  faults by kind: {:?}", self.faults_injected);
        }
        for (error, n) in self.provision_errors.iter().take(10) {
            let _ = writeln!(out, "  provision failed x{n}: {error}");
        }
        for v in self.violations.iter().take(20) {
            let _ = writeln!(out, "  {:?} [{}] {}", v.severity, v.checker, v.message);
        }
        out
    }
}

//! The conformance suite: what every [`Backend`] must do, as plain async functions.
//!
//! Each function takes the backend under test as `&dyn Backend`, a [`CloudInspector`] that can
//! see what exists at the provider afterwards, and a [`Setup`] describing the environment. It
//! returns `Err` with a message naming the broken guarantee. The simulator runs the suite in
//! every test run; `cargo xtask ci` runs it against moto's EC2 server over HTTP; an operator can
//! run it against a real account.

use anyhow::{Context, anyhow, bail, ensure};
use async_trait::async_trait;

use crate::{
    AlmanacTick, Backend, BackendError, ComputeGrant, ComputeManifest, Envelope, GrantId, ImageHash, RegionLabel,
};

/// A view of the provider's side, used to check that nothing is left behind.
#[async_trait]
pub trait CloudInspector: Send + Sync {
    /// Every resource the provider still holds for `grant` (instances not terminated, key
    /// pairs, security groups, volumes), as human-readable descriptions. Empty means clean.
    async fn resources_of(&self, grant: GrantId) -> anyhow::Result<Vec<String>>;
}

/// The environment the suite runs in.
#[derive(Clone, Debug)]
pub struct Setup {
    /// A region the backend may use.
    pub allowed_region: RegionLabel,
    /// A well-formed region the backend must refuse.
    pub disallowed_region: RegionLabel,
    /// The current tick of the coalition clock.
    pub now: AlmanacTick,
    /// How many ticks a lifecycle grant lasts; short enough to wait for, long enough to boot.
    pub lifetime_ticks: u64,
    /// Distinguishes this run's grant ids from other runs against the same cloud.
    pub run_salt: [u8; 8],
}

impl Setup {
    fn grant_id(&self, case: u8) -> GrantId {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&self.run_salt);
        id[8] = case;
        id[31] = 0xC0;
        GrantId(id)
    }

    fn manifest(&self, tdx_required: bool) -> ComputeManifest {
        ComputeManifest {
            cpu_millicores: 1_500,
            ram_mib: 2_048,
            storage_gib: 8,
            tdx_required,
            image_post_hash: ImageHash([0x5A; 32]),
        }
    }

    fn grant<'a>(&self, case: u8, manifest: &'a ComputeManifest, valid_to: AlmanacTick) -> ComputeGrant<'a> {
        ComputeGrant { id: self.grant_id(case), manifest, valid_from: self.now, valid_to }
    }
}

/// Runs every case in turn and returns the first failure, named. `setup.now` must be the
/// current tick when it is called.
pub async fn run_all(backend: &dyn Backend, inspector: &dyn CloudInspector, setup: &Setup) -> anyhow::Result<()> {
    // The full lifecycle waits for its deadline, so it runs last: the others' deadlines are
    // computed from `setup.now` and must still lie ahead.
    terminate_twice(backend, inspector, setup).await.context("conformance: terminate_twice")?;
    tdx_refused(backend, inspector, setup).await.context("conformance: tdx_refused")?;
    region_refused(backend, inspector, setup).await.context("conformance: region_refused")?;
    expired_refused(backend, inspector, setup).await.context("conformance: expired_refused")?;
    full_lifecycle(backend, inspector, setup).await.context("conformance: full_lifecycle")?;
    Ok(())
}

async fn assert_clean(inspector: &dyn CloudInspector, grant: GrantId, when: &str) -> anyhow::Result<()> {
    let left = inspector.resources_of(grant).await?;
    ensure!(left.is_empty(), "{when}: grant {grant} still holds {left:?}");
    Ok(())
}

/// Provision, watch to the deadline, terminate: the instance runs, the usage is plausible, and
/// nothing is left afterwards.
pub async fn full_lifecycle(
    backend: &dyn Backend,
    inspector: &dyn CloudInspector,
    setup: &Setup,
) -> anyhow::Result<()> {
    let manifest = setup.manifest(false);
    let valid_to = AlmanacTick(setup.now.0 + setup.lifetime_ticks);
    let grant = setup.grant(1, &manifest, valid_to);
    ensure!(backend.can_satisfy(&grant), "can_satisfy refused an ordinary grant");
    let envelope = Envelope::for_region(setup.allowed_region.clone());
    let instance = backend.provision(&grant, &envelope).await.context("provision")?;
    ensure!(instance.grant_id == grant.id, "provision returned grant {} for {}", instance.grant_id, grant.id);
    ensure!(instance.backend == backend.name(), "instance names backend {:?}", instance.backend);
    ensure!(instance.region == setup.allowed_region, "instance in {} not {}", instance.region, setup.allowed_region);
    ensure!(!instance.instance_id.is_empty(), "empty instance id");
    ensure!(
        instance.ssh_host_public_key.starts_with("ssh-"),
        "host key is not an OpenSSH public key: {:?}",
        instance.ssh_host_public_key
    );
    ensure!(
        instance.ssh_private_key.expose().contains("PRIVATE KEY"),
        "per-grant private key is not an OpenSSH private key"
    );
    let usage = backend.watch_until_exit(&instance, valid_to).await.context("watch_until_exit")?;
    ensure!(usage.storage_bytes >= u64::from(manifest.storage_gib) << 30, "storage {usage:?} below the manifest");
    ensure!(usage.cpu_seconds > 0 && usage.ram_mib_seconds > 0, "a running instance metered nothing: {usage:?}");
    backend.terminate(&instance).await.context("terminate")?;
    assert_clean(inspector, grant.id, "after terminate").await
}

/// Terminating twice succeeds both times and leaves nothing.
pub async fn terminate_twice(
    backend: &dyn Backend,
    inspector: &dyn CloudInspector,
    setup: &Setup,
) -> anyhow::Result<()> {
    let manifest = setup.manifest(false);
    let grant = setup.grant(2, &manifest, AlmanacTick(setup.now.0 + setup.lifetime_ticks));
    let envelope = Envelope::for_region(setup.allowed_region.clone());
    let instance = backend.provision(&grant, &envelope).await.context("provision")?;
    backend.terminate(&instance).await.context("first terminate")?;
    backend.terminate(&instance).await.context("second terminate")?;
    assert_clean(inspector, grant.id, "after two terminates").await
}

async fn expect_refusal(
    backend: &dyn Backend,
    inspector: &dyn CloudInspector,
    grant: &ComputeGrant<'_>,
    envelope: &Envelope,
    matches: fn(&BackendError) -> bool,
) -> anyhow::Result<()> {
    ensure!(!backend.can_satisfy(grant) || envelope.region.is_some(), "can_satisfy accepted the grant");
    match backend.provision(grant, envelope).await {
        Ok(instance) => {
            let _ = backend.terminate(&instance).await;
            bail!("provision accepted the grant and made {}", instance.instance_id)
        }
        Err(err) => {
            let typed =
                err.downcast_ref::<BackendError>().ok_or_else(|| anyhow!("refusal is not a BackendError: {err:#}"))?;
            ensure!(matches(typed), "refused with the wrong error: {typed:?}");
            ensure!(!typed.is_retryable(), "a permanent refusal is marked retryable: {typed:?}");
        }
    }
    assert_clean(inspector, grant.id, "after refusal").await
}

/// A grant that requires TDX is refused by a backend without TDX, and nothing is created.
pub async fn tdx_refused(backend: &dyn Backend, inspector: &dyn CloudInspector, setup: &Setup) -> anyhow::Result<()> {
    if backend.capabilities().await?.tdx_capable {
        return Ok(());
    }
    let manifest = setup.manifest(true);
    let grant = setup.grant(3, &manifest, AlmanacTick(setup.now.0 + setup.lifetime_ticks));
    ensure!(!backend.can_satisfy(&grant), "can_satisfy accepted a TDX grant");
    let envelope = Envelope::for_region(setup.allowed_region.clone());
    expect_refusal(backend, inspector, &grant, &envelope, |e| matches!(e, BackendError::Unsatisfiable { .. })).await
}

/// A grant for a region outside the allowlist is refused, and nothing is created.
pub async fn region_refused(
    backend: &dyn Backend,
    inspector: &dyn CloudInspector,
    setup: &Setup,
) -> anyhow::Result<()> {
    let manifest = setup.manifest(false);
    let grant = setup.grant(4, &manifest, AlmanacTick(setup.now.0 + setup.lifetime_ticks));
    let envelope = Envelope::for_region(setup.disallowed_region.clone());
    expect_refusal(backend, inspector, &grant, &envelope, |e| matches!(e, BackendError::RegionNotAllowed { .. })).await
}

/// A grant whose deadline already passed is refused, and nothing is created.
pub async fn expired_refused(
    backend: &dyn Backend,
    inspector: &dyn CloudInspector,
    setup: &Setup,
) -> anyhow::Result<()> {
    let manifest = setup.manifest(false);
    let grant = ComputeGrant {
        valid_from: AlmanacTick(setup.now.0.saturating_sub(10)),
        ..setup.grant(5, &manifest, AlmanacTick(setup.now.0.saturating_sub(1)))
    };
    ensure!(!backend.can_satisfy(&grant), "can_satisfy accepted an expired grant");
    let envelope = Envelope::for_region(setup.allowed_region.clone());
    expect_refusal(backend, inspector, &grant, &envelope, |e| matches!(e, BackendError::DeadlinePassed { .. })).await
}

//! `serve`: the bridge runtime as a long-running service. It binds the API's Unix socket (mode
//! 0600; and a TCP address when `--listen` names one), starts the bridge (`crate::host`: stand
//! by, replay, recover, admit, reap, keep the lease), serves the API (`crate::api`) until the
//! bridge's run ends (a signal's drain, the lease lost, a failed start), and exits with the
//! code of how it ended (`crate::exit`).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use aws_backend::{AwsBootConfig, LedgerStore};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::api::{self, Api};
use crate::exit::Exit;
use crate::{health, host};

/// The socket's name in systemd's runtime directory (`RuntimeDirectory=` sets
/// `$RUNTIME_DIRECTORY`).
const SOCKET_NAME: &str = "aws-backend.sock";

/// How long the HTTP servers may take to close their connections once the bridge has stopped.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// `serve`: see the module doc. Returns the exit of how the bridge's run ended.
pub(crate) async fn serve(config: &Path, socket: Option<PathBuf>, listen: Option<SocketAddr>) -> anyhow::Result<Exit> {
    let cfg = AwsBootConfig::load(config)?;
    for warning in cfg.warnings() {
        tracing::warn!(config = %config.display(), "{warning}");
    }
    let socket = socket_path(&cfg, socket, std::env::var_os("RUNTIME_DIRECTORY")).context(Exit::Config)?;
    // Bound before the ledger is opened: a second `serve` on the same socket stops here,
    // before it touches anything.
    let unix = bind_private(&socket).with_context(|| format!("binding the API socket {}", socket.display()))?;
    let tcp = match listen {
        Some(addr) => {
            let listener = match TcpListener::bind(addr).await {
                Ok(listener) => listener,
                Err(err) => {
                    remove_socket(&socket);
                    return Err(anyhow::Error::new(err)
                        .context(format!("binding --listen {addr}: give a free local address"))
                        .context(Exit::Config));
                }
            };
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    %addr,
                    "the API listens beyond loopback: it has no authentication and its answers hold each grant's private key; \
                     keep the address on a network only compute-bridge reaches"
                );
            }
            Some(listener)
        }
        None => None,
    };
    let metrics = match health::install_metrics() {
        Ok(metrics) => metrics,
        Err(err) => {
            remove_socket(&socket);
            return Err(err);
        }
    };
    let mut hosted = match host::start(&cfg).await {
        Ok(hosted) => hosted,
        Err(err) => {
            remove_socket(&socket);
            return Err(err);
        }
    };
    let _signals = host::drain_on_signals(hosted.bridge.clone())?;
    let (stop, stopping) = watch::channel(false);
    let router = api::router(Api::new(hosted.bridge.clone(), &cfg, hosted.clock.clone(), stopping.clone()))
        .merge(health::routes(hosted.bridge.clone(), metrics));
    let _notifying = AbortOnDrop(tokio::spawn(health::notify_systemd(hosted.bridge.clone())));
    let mut servers = tokio::task::JoinSet::new();
    tracing::info!(socket = %socket.display(), "serving the API on the Unix socket");
    servers.spawn(axum::serve(unix, router.clone()).with_graceful_shutdown(stopped(stopping.clone())).into_future());
    if let Some(tcp) = tcp {
        tracing::info!(addr = ?tcp.local_addr().ok(), "serving the API over TCP");
        servers.spawn(axum::serve(tcp, router).with_graceful_shutdown(stopped(stopping)).into_future());
    }
    let stopped = hosted.stopped().await;
    stop.send_replace(true);
    let closed = tokio::time::timeout(CLOSE_WITHIN, async {
        while let Some(joined) = servers.join_next().await {
            if let Ok(Err(err)) = joined {
                tracing::warn!(error = %err, "the API server ended with an error");
            }
        }
    })
    .await;
    if closed.is_err() {
        tracing::warn!("connections to the API were still open after the bridge stopped: closed");
    }
    remove_socket(&socket);
    // How it stopped is logged by the bridge (a failure with its error).
    let exit = Exit::of_stopped(&stopped);
    tracing::info!(exit = exit.code(), "aws-backend serve stopped");
    Ok(exit)
}

/// A task that ends with the scope holding it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Where the API's socket goes: `--socket`, else `$RUNTIME_DIRECTORY/aws-backend.sock` (its
/// first entry), else `<ledger_path>.sock` with the file ledger.
fn socket_path(
    cfg: &AwsBootConfig,
    given: Option<PathBuf>,
    runtime_directory: Option<OsString>,
) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path);
    }
    if let Some(dirs) = runtime_directory
        && let Some(dir) = std::env::split_paths(&dirs).next().filter(|d| !d.as_os_str().is_empty())
    {
        return Ok(dir.join(SOCKET_NAME));
    }
    match cfg.ledger_store() {
        LedgerStore::File { path } => {
            let mut name = path.into_os_string();
            name.push(".sock");
            Ok(PathBuf::from(name))
        }
        LedgerStore::DynamoDb(_) => bail!(
            "no place for the API socket: the ledger is in DynamoDB, so there is no ledger file to put it next to; give \
             --socket PATH, or run under systemd with RuntimeDirectory= (see deploy/aws-backend.service)"
        ),
    }
}

/// Binds the socket at `path` with mode 0600 from the start: it is bound in a fresh directory
/// of mode 0700 next to `path`, made private, then renamed into place, so nobody else can
/// connect in between. A socket file left by a process that died is replaced; one that a
/// live process answers on is refused.
fn bind_private(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another process serves on {}: stop it first, or give this one another --socket", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let private = parent.join(format!(".aws-backend-{}.sock.d", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private).with_context(|| {
        format!("creating {} (does {} exist and is it writable?)", private.display(), parent.display())
    })?;
    let bound = (|| {
        let inside = private.join(SOCKET_NAME);
        let listener = UnixListener::bind(&inside)?;
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inside, path)?;
        Ok::<_, std::io::Error>(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    Ok(bound?)
}

fn remove_socket(path: &Path) {
    if let Err(err) = std::fs::remove_file(path)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(socket = %path.display(), error = %err, "could not remove the API socket");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn config(ledger: &str) -> AwsBootConfig {
        AwsBootConfig::from_toml(&format!(
            r#"
            regions = ["us-east-1"]
            instance_families = ["m6i"]
            owner = "unit"
            ami = {{ us-east-1 = "ami-12345678" }}
            almanac = {{ epoch_unix_ms = 0, tick_ms = 1000 }}
            guest = {{ content_store_url = "http://127.0.0.1:9/blobs/{{hash}}" }}
            {ledger}
            "#
        ))
        .expect("a valid config")
    }

    #[test]
    fn the_socket_goes_where_it_is_told_then_in_the_runtime_directory_then_next_to_the_ledger() {
        let file = config(r#"ledger_path = "/var/lib/cb/aws.ledger""#);
        let given = socket_path(&file, Some("/tmp/x.sock".into()), Some("/run/aws-backend".into())).expect("given");
        assert_eq!(given, Path::new("/tmp/x.sock"));
        let runtime = socket_path(&file, None, Some("/run/aws-backend:/run/other".into())).expect("runtime");
        assert_eq!(runtime, Path::new("/run/aws-backend/aws-backend.sock"));
        let ledger = socket_path(&file, None, None).expect("next to the ledger");
        assert_eq!(ledger, Path::new("/var/lib/cb/aws.ledger.sock"));
        let group = config(
            r#"[ledger]
            store = "dynamodb"
            table = "ledger"
            group = "g"
            key_seed_path = "/etc/cb/g.keyseed""#,
        );
        let err = format!("{:#}", socket_path(&group, None, None).expect_err("nowhere to put it"));
        assert!(err.contains("--socket") && err.contains("RuntimeDirectory"), "{err}");
    }

    #[tokio::test]
    async fn the_socket_is_private_and_a_live_one_is_not_taken_over() {
        let dir = std::env::temp_dir().join(format!("aws-backend-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("api.sock");
        std::fs::write(&path, "").expect("a stale file");
        let listener = bind_private(&path).expect("bound over a stale file");
        let mode = std::fs::metadata(&path).expect("exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = format!("{:#}", bind_private(&path).expect_err("a live socket"));
        assert!(err.contains("another process serves on"), "{err}");
        drop(listener);
        let leftovers: Vec<_> = std::fs::read_dir(&dir).expect("read").filter_map(Result::ok).collect();
        assert_eq!(leftovers.len(), 1, "only the socket: {leftovers:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

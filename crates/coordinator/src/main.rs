//! `kiln-coordinator`: one member of a kiln cluster.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use kiln_coordinator::core::Tuning;
use kiln_coordinator::scheduler::SchedulerConfig;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A kiln coordinator: Raft-replicated state, scheduler and API"
)]
struct Args {
    /// This coordinator's Raft id (non-zero, unique in the cluster).
    #[arg(long, env = "KILN_ID")]
    id: u64,
    /// gRPC address to listen on (clients, agents and peers).
    #[arg(long, default_value = "127.0.0.1:7470", env = "KILN_LISTEN")]
    listen: String,
    /// HTTP address for /healthz and /metrics.
    #[arg(long, default_value = "127.0.0.1:7471", env = "KILN_HTTP")]
    http: String,
    /// Address peers and agents should use, if not the listen address.
    #[arg(long, env = "KILN_ADVERTISE")]
    advertise: Option<String>,
    #[arg(long, default_value = "./.kiln/coordinator", env = "KILN_DATA_DIR")]
    data_dir: PathBuf,
    /// Start a new cluster with this coordinator as its only member (ignored once it has state).
    #[arg(long)]
    bootstrap: bool,
    /// Join the cluster one of whose coordinators listens here (ignored once it has state).
    #[arg(long)]
    join: Option<String>,
    /// Mark a node down after this many milliseconds without a heartbeat.
    #[arg(long, default_value_t = 10_000)]
    node_grace_ms: u64,
    /// Heartbeat interval asked of agents, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    heartbeat_ms: u64,
    /// Raft election timeout (minimum; the maximum is twice this), in milliseconds. A follower
    /// starts an election after the leader's lease (the maximum) plus this timeout.
    #[arg(long, default_value_t = 100)]
    election_timeout_ms: u64,
    /// Score every feasible node instead of a sample of two.
    #[arg(long)]
    exact_scoring: bool,
    /// Take repositories that are paths (or file:// URLs) on this machine: for one user's
    /// machine only; a caller could otherwise read any repository on the coordinator's disk.
    #[arg(long)]
    allow_local_repositories: bool,
    /// The cluster CA's certificate (`kiln tls init`).
    #[arg(long, env = "KILN_CA")]
    ca: Option<PathBuf>,
    /// This coordinator's certificate (`kiln tls issue coordinator ID`).
    #[arg(long, env = "KILN_CERT")]
    cert: Option<PathBuf>,
    /// This coordinator's key.
    #[arg(long, env = "KILN_KEY")]
    key: Option<PathBuf>,
    /// The cluster's secrets key (`kiln tls init` writes DIR/secrets.key): the same file on
    /// every coordinator. Without it, secrets cannot be set.
    #[arg(long, env = "KILN_SECRETS_KEY")]
    secrets_key: Option<PathBuf>,
    /// Take a verified backup into this directory every --snapshot-every (on the leader).
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,
    /// How often to take a scheduled backup (`1h`, `30m`).
    #[arg(long, default_value = "1h", requires = "snapshot_dir")]
    snapshot_every: String,
    /// How many scheduled backups to keep (the oldest go first).
    #[arg(long, default_value_t = 24, requires = "snapshot_dir")]
    keep: usize,
    /// `text`, or `json`: one JSON object a line.
    #[arg(long, env = "KILN_LOG_FORMAT", default_value = "text")]
    log_format: kiln_api::logs::LogFormat,
    /// Per pipeline, the newest finished runs kept in memory; older ones (see
    /// --keep-runs-for) move to the archive on disk, still readable by id.
    #[arg(long, default_value_t = 100)]
    keep_runs: usize,
    /// Finished runs younger than this stay in memory whatever --keep-runs says.
    #[arg(long, default_value = "7d")]
    keep_runs_for: String,
    /// How often the leader archives runs past retention.
    #[arg(long, default_value = "30s")]
    archive_every: String,
    /// Serve plaintext gRPC with no authentication at all: loopback addresses only, for
    /// trying things on one machine.
    #[arg(long)]
    insecure: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    kiln_api::logs::init(args.log_format, "info,openraft=warn,sled=warn");
    if let Err(e) = run(args).await {
        eprintln!("kiln-coordinator: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.id == 0 {
        return Err("--id: must be non-zero".into());
    }
    let tls = kiln_api::pki::tls_choice(
        args.ca.clone(),
        args.cert.clone(),
        args.key.clone(),
        args.insecure,
        &[
            &args.listen,
            args.advertise.as_deref().unwrap_or("127.0.0.1"),
        ],
    )?;
    if tls.as_ref().is_some_and(|t| t.cert.is_none()) {
        return Err("--cert and --key: a coordinator needs its own certificate".into());
    }
    let snapshots = match &args.snapshot_dir {
        Some(dir) => {
            let every = kiln_api::units::parse_duration_ms(&args.snapshot_every)
                .ok()
                .filter(|ms| *ms >= 1000)
                .ok_or_else(|| {
                    format!(
                        "--snapshot-every {}: a duration of at least 1s (30m, 1h)",
                        args.snapshot_every
                    )
                })?;
            if args.keep == 0 {
                return Err("--keep: at least 1".into());
            }
            Some(kiln_coordinator::controllers::backups::Schedule {
                dir: dir.clone(),
                every: Duration::from_millis(every),
                keep: args.keep,
            })
        }
        None => None,
    };
    let grpc = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", args.listen))?;
    let http = tokio::net::TcpListener::bind(&args.http)
        .await
        .map_err(|e| format!("--http {}: {e}", args.http))?;
    let config = kiln_coordinator::Config {
        id: args.id,
        data_dir: args.data_dir,
        advertise: args.advertise,
        bootstrap: args.bootstrap,
        join: args.join,
        tuning: Tuning {
            node_grace: Duration::from_millis(args.node_grace_ms),
            heartbeat: Duration::from_millis(args.heartbeat_ms),
            election_timeout_ms: args.election_timeout_ms,
            scheduler: SchedulerConfig {
                sample: if args.exact_scoring { None } else { Some(2) },
                ..Default::default()
            },
            local_repositories: args.allow_local_repositories,
            retention: kiln_coordinator::state::retention::Retention {
                keep_last: args.keep_runs,
                keep_for_ms: kiln_api::units::parse_duration_ms(&args.keep_runs_for)
                    .map_err(|e| format!("--keep-runs-for: {e}"))?
                    as i64,
            },
            archive_every: Duration::from_millis(
                kiln_api::units::parse_duration_ms(&args.archive_every)
                    .ok()
                    .filter(|ms| *ms >= 100)
                    .ok_or_else(|| {
                        format!(
                            "--archive-every {}: a duration of at least 100ms",
                            args.archive_every
                        )
                    })?,
            ),
        },
        tls,
        secrets_key: args.secrets_key,
        snapshots,
    };
    let coordinator = kiln_coordinator::start(config, grpc, http).await?;
    println!(
        "kiln-coordinator ready id={} grpc={} http={}",
        args.id, coordinator.grpc_addr, coordinator.http_addr
    );
    shutdown_signal().await;
    coordinator.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

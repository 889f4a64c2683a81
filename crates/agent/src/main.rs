//! `kiln-agent`: runs on every node.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A kiln agent: reports this node and runs the work placed on it"
)]
struct Args {
    /// This node's id; defaults to the host name.
    #[arg(long, env = "KILN_NODE_ID")]
    node_id: Option<String>,
    /// Coordinator gRPC addresses, comma-separated; any one will do.
    #[arg(
        long,
        env = "KILN_COORDINATORS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7470"
    )]
    coordinators: Vec<String>,
    #[arg(long, default_value = "./.kiln/agent", env = "KILN_DATA_DIR")]
    data_dir: PathBuf,
    /// A node label, KEY=VALUE; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Report this CPU capacity instead of the detected one (e.g. 2, 500m).
    #[arg(long)]
    cpu: Option<String>,
    /// Report this memory capacity instead of the detected one (e.g. 4Gi).
    #[arg(long)]
    memory: Option<String>,
    /// Simulate GPUs instead of reading NVML, e.g. "4xH100-80GB,nvlink=0-1,2-3"; they are
    /// labelled simulated wherever they show.
    #[arg(long, env = "KILN_SIMULATE_GPUS")]
    simulate_gpus: Option<String>,
    /// The cluster's image registry, HOST:PORT: builds push there.
    #[arg(long, env = "KILN_REGISTRY")]
    registry: Option<String>,
    /// The host or IP gateways reach this node's service replicas at.
    #[arg(long, env = "KILN_ADVERTISE", default_value = "127.0.0.1")]
    advertise: String,
    /// The service gateway's URL, given to every task as KILN_GATEWAY (a smoke test calls
    /// `$KILN_GATEWAY/ENV/SERVICE/...`).
    #[arg(long, env = "KILN_GATEWAY")]
    gateway: Option<String>,
    /// The cluster CA's certificate (`kiln tls init`).
    #[arg(long, env = "KILN_CA")]
    ca: Option<std::path::PathBuf>,
    /// This node's agent certificate (`kiln tls issue agent NODE`): it may speak for this
    /// node only.
    #[arg(long, env = "KILN_CERT")]
    cert: Option<std::path::PathBuf>,
    /// This node's key.
    #[arg(long, env = "KILN_KEY")]
    key: Option<std::path::PathBuf>,
    /// Plaintext to coordinators on loopback addresses (they run with --insecure too).
    #[arg(long)]
    insecure: bool,
    /// `text`, or `json`: one JSON object a line.
    #[arg(long, env = "KILN_LOG_FORMAT", default_value = "text")]
    log_format: kiln_api::logs::LogFormat,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?}: empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    kiln_api::logs::init(args.log_format, "info");
    let result = async {
        let cpu_millis = args.cpu.as_deref().map(kiln_api::units::parse_cpu).transpose().map_err(|e| format!("--cpu: {e}"))?;
        let memory_bytes =
            args.memory.as_deref().map(kiln_api::units::parse_memory).transpose().map_err(|e| format!("--memory: {e}"))?;
        let node_id = match args.node_id {
            Some(id) => id,
            None => hostname::get().map_err(|e| format!("hostname: {e}"))?.to_string_lossy().into_owned(),
        };
        let addrs: Vec<&str> = args.coordinators.iter().map(String::as_str).collect();
        let tls = kiln_api::pki::tls_choice(args.ca, args.cert, args.key, args.insecure, &addrs)?
            .map(|files| files.client_config())
            .transpose()
            .map_err(|e| e.to_string())?;
        let config = kiln_agent::Config {
            node_id,
            coordinators: args.coordinators,
            data_dir: args.data_dir,
            labels: args.labels.into_iter().collect(),
            cpu_millis,
            memory_bytes,
            simulate_gpus: args.simulate_gpus,
            registry: args.registry,
            advertise: args.advertise,
            gateway: args.gateway,
            tls,
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            stop.cancel();
        });
        println!("kiln-agent ready node={}", config.node_id);
        kiln_agent::run(config, shutdown).await.map_err(|e| e.to_string())
    }
    .await;
    if let Err(e) = result {
        eprintln!("kiln-agent: {e}");
        std::process::exit(1);
    }
}

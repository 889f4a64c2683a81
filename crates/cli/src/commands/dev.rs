//! `kiln dev`: one coordinator (bootstrapped, id 1), one agent and a service gateway in this
//! process, data in `./.kiln`, with the environments `staging` and `production` (the
//! default). With `--run FILE` it runs that pipeline to the end and exits with its status;
//! without, it serves until interrupted. Tasks find the gateway in `$KILN_GATEWAY`.
//!
//! Containers: the agent offers the Docker driver when a Docker daemon answers. Builds push
//! to `--registry`, or else to a registry `kiln dev` starts itself on 127.0.0.1 when Debian's
//! `docker-registry` is installed (storage in `<data-dir>/registry`). A `--run` pipeline
//! whose stages need what is missing is refused up front, saying what is missing.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kiln_api::auth::Principal;
use kiln_api::pki::TlsFiles;
use kiln_coordinator::core::Tuning;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::error::CliError;

#[derive(Args, Debug)]
pub struct DevArgs {
    #[arg(long, default_value = "./.kiln")]
    data_dir: PathBuf,
    /// gRPC address (0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7470")]
    listen: String,
    /// HTTP address for /healthz and /metrics.
    #[arg(long, default_value = "127.0.0.1:7471")]
    http: String,
    /// Run this pipeline, follow it, and exit with its status.
    #[arg(long)]
    run: Option<PathBuf>,
    /// Give the embedded agent simulated GPUs, e.g. "2xH100-80GB,nvlink=0-1".
    #[arg(long)]
    simulate_gpus: Option<String>,
    /// The image registry builds push to (HOST:PORT); default: start `docker-registry` on
    /// 127.0.0.1 if it is installed.
    #[arg(long, env = "KILN_REGISTRY")]
    registry: Option<String>,
    /// Where the service gateway listens for HTTP.
    #[arg(long, default_value = "127.0.0.1:7480")]
    gateway: String,
}

pub async fn dev(args: DevArgs, json: bool) -> Result<(), CliError> {
    let filter = if args.run.is_some() {
        "warn"
    } else {
        "info,openraft=warn,sled=warn"
    };
    let format = std::env::var("KILN_LOG_FORMAT")
        .ok()
        .map(|f| f.parse())
        .transpose()
        .map_err(|e: String| CliError::Invalid(format!("KILN_LOG_FORMAT: {e}")))?
        .unwrap_or_default();
    kiln_api::logs::init(format, filter);
    let mut needs = Needs::default();
    if let Some(file) = &args.run {
        // Check the file before starting anything.
        let yaml = std::fs::read_to_string(file)
            .map_err(|e| CliError::Invalid(format!("{}: {e}", file.display())))?;
        let pipeline = kiln_api::validate::parse_pipeline(&file.display().to_string(), &yaml)
            .map_err(|e| CliError::Invalid(e.to_string()))?;
        needs = Needs::of(&pipeline);
    }
    // Docker and a registry, when there is a Docker daemon to use them.
    let docker = kiln_agent::docker::DockerDriver::connect("kiln-dev-probe", None).await;
    let mut _registry = None;
    let registry = match (&docker, args.registry.clone()) {
        (Err(e), _) => {
            if !needs.docker.is_empty() {
                return Err(CliError::Missing(format!(
                    "stages {} run on Docker, but no Docker daemon answers ({e})",
                    needs.docker.join(", ")
                )));
            }
            eprintln!(
                "kiln dev: no Docker daemon answers ({e}); stages with image: or build: will wait for a node that offers docker"
            );
            None
        }
        (Ok(_), Some(addr)) => Some(addr),
        // A --run pipeline that builds nothing needs no registry.
        (Ok(_), None) if args.run.is_some() && needs.build.is_empty() => None,
        (Ok(_), None) => match super::registry::find_program() {
            Some(program) => {
                let r = super::registry::start(&program, &args.data_dir.join("registry")).await?;
                let addr = r.addr.clone();
                _registry = Some(r);
                Some(addr)
            }
            None => None,
        },
    };
    match &registry {
        Some(addr) => {
            eprintln!("kiln dev: Docker available; images push to the registry at {addr}")
        }
        None if docker.is_ok() && !needs.build.is_empty() => {
            return Err(CliError::Missing(format!(
                "stages {} build images, which needs a registry: install Debian's {} package (kiln dev then starts one) or pass --registry HOST:PORT",
                needs.build.join(", "),
                super::registry::PROGRAM
            )));
        }
        None if docker.is_ok() && args.run.is_none() => eprintln!(
            "kiln dev: Docker available; no registry (install {} or pass --registry), so build: stages will fail",
            super::registry::PROGRAM
        ),
        None if docker.is_ok() => eprintln!("kiln dev: Docker available"),
        None => {}
    }
    let grpc = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| CliError::Invalid(format!("--listen {}: {e}", args.listen)))?;
    let http = tokio::net::TcpListener::bind(&args.http)
        .await
        .map_err(|e| CliError::Invalid(format!("--http {}: {e}", args.http)))?;
    let tls_dir = args.data_dir.join("tls");
    ensure_certificates(&tls_dir)?;
    let client_tls = |p: &Principal| {
        TlsFiles::in_dir(&tls_dir, p)
            .client_config()
            .map_err(|e| CliError::Other(e.to_string()))
    };
    let config = kiln_coordinator::Config {
        id: 1,
        data_dir: args.data_dir.join("coordinator"),
        advertise: None,
        bootstrap: true,
        join: None,
        tuning: Tuning {
            node_grace: Duration::from_secs(10),
            // One user's machine: `kiln repo add app ~/src/app` works.
            local_repositories: true,
            ..Default::default()
        },
        tls: Some(TlsFiles::in_dir(&tls_dir, &Principal::Coordinator(1))),
        secrets_key: Some(kiln_api::pki::secrets_key_path(&tls_dir)),
        snapshots: None,
    };
    let coordinator = kiln_coordinator::start(config, grpc, http)
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    let addr = coordinator.grpc_addr.to_string();
    eprintln!(
        "kiln dev: coordinator grpc={} http={}, data in {}",
        addr,
        coordinator.http_addr,
        args.data_dir.display()
    );
    eprintln!(
        "kiln dev: TLS with its own CA in {}; `kiln status` from another terminal here uses it",
        tls_dir.display()
    );

    let shutdown = CancellationToken::new();
    let gateway = tokio::net::TcpListener::bind(&args.gateway)
        .await
        .map_err(|e| CliError::Invalid(format!("--gateway {}: {e}", args.gateway)))?;
    let gateway_addr = gateway
        .local_addr()
        .map_err(|e| CliError::Other(e.to_string()))?;
    eprintln!(
        "kiln dev: service gateway on http://{gateway_addr}/<service>/ and /<environment>/<service>/"
    );
    let gateway_config = kiln_gateway::Config {
        coordinators: vec![addr.clone()],
        id: "dev".into(),
        hold: Duration::from_secs(30),
        tls: Some(client_tls(&Principal::Gateway("dev".into()))?),
    };
    tokio::spawn(kiln_gateway::run(gateway, gateway_config, shutdown.clone()));

    let agent_config = kiln_agent::Config {
        node_id: "dev".into(),
        coordinators: vec![addr.clone()],
        data_dir: args.data_dir.join("agent"),
        labels: [("kiln.dev".to_string(), "true".to_string())].into(),
        cpu_millis: None,
        memory_bytes: None,
        simulate_gpus: args.simulate_gpus.clone(),
        registry,
        advertise: "127.0.0.1".into(),
        gateway: Some(format!("http://{gateway_addr}")),
        tls: Some(client_tls(&Principal::Agent("dev".into()))?),
    };
    let agent = tokio::spawn(kiln_agent::run(agent_config.clone(), shutdown.clone()));

    let credentials = crate::client::Credentials {
        tls: Some(client_tls(&crate::client::dev_client())?),
        token: None,
    };
    let mut client = Client::new(vec![addr], &credentials, Duration::from_secs(15))?;
    ensure_environments(&mut client).await?;
    let work = async {
        match &args.run {
            Some(file) => super::run::run(&mut client, file, true, None, json)
                .await
                .map(|_| ()),
            None => std::future::pending().await,
        }
    };
    // SIGINT or SIGTERM stops everything kiln dev started, as the end of a --run does.
    let result = tokio::select! {
        r = work => r,
        signal = stopped() => match &args.run {
            Some(_) => Err(CliError::Other(format!("stopped by {signal} before the run ended"))),
            None => Ok(()),
        },
    };
    shutdown.cancel();
    let _ = agent.await;
    // Nothing kiln dev started outlives it: its replica and stage containers go too.
    match kiln_agent::remove_containers(&agent_config).await {
        Ok(0) => {}
        Ok(n) => eprintln!("kiln dev: removed {n} containers"),
        Err(e) => eprintln!("kiln dev: could not remove its containers: {e}"),
    }
    coordinator.shutdown().await;
    result
}

/// Resolves on SIGINT or SIGTERM, naming it.
async fn stopped() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// The environments of the delivery path, `staging` and `production` (the default: bare
/// service names route there), made on the first start of a data dir.
async fn ensure_environments(client: &mut Client) -> Result<(), CliError> {
    for (name, default) in [("staging", false), ("production", true)] {
        let req = kiln_api::pb::CreateEnvironmentRequest {
            name: name.into(),
            approval: false,
            default,
            env: Default::default(),
        };
        let made = client
            .call(|mut c| {
                let req = req.clone();
                async move { c.create_environment(req).await }
            })
            .await;
        match made {
            Ok(_) | Err(CliError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    eprintln!("kiln dev: environments staging and production (the default)");
    Ok(())
}

/// The stages of a `--run` pipeline that need Docker, and those that also need a registry.
#[derive(Default)]
struct Needs {
    docker: Vec<String>,
    build: Vec<String>,
}

impl Needs {
    fn of(pipeline: &kiln_api::spec::Pipeline) -> Needs {
        let mut needs = Needs::default();
        for stage in &pipeline.stages {
            match &stage.container {
                Some(kiln_api::spec::Container::Build(_)) => {
                    needs.docker.push(stage.name.clone());
                    needs.build.push(stage.name.clone());
                }
                Some(_) => needs.docker.push(stage.name.clone()),
                None => {}
            }
        }
        needs
    }
}

/// The CA and certificates `kiln dev` uses, made on its first start (and any that went
/// missing since): the coordinator, the agent and the gateway each with their own, and one
/// for the CLI (`client/dev`, admin) that `kiln` finds in `./.kiln/tls`.
fn ensure_certificates(dir: &std::path::Path) -> Result<(), CliError> {
    let fail = |e: kiln_api::pki::PkiError| CliError::Other(format!("kiln dev: {e}"));
    if !kiln_api::pki::ca_cert_path(dir).is_file() {
        kiln_api::pki::init(dir, false).map_err(fail)?;
    }
    kiln_api::pki::ensure_secrets_key(dir).map_err(fail)?;
    for p in [
        Principal::Coordinator(1),
        Principal::Agent("dev".into()),
        Principal::Gateway("dev".into()),
        crate::client::dev_client(),
    ] {
        let (cert, key) = kiln_api::pki::leaf_paths(dir, &p);
        if !cert.is_file() || !key.is_file() {
            kiln_api::pki::issue(dir, &p, kiln_api::pki::LEAF_VALIDITY, dir, true).map_err(fail)?;
        }
    }
    Ok(())
}

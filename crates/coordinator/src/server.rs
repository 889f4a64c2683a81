//! Starting a coordinator: open sled, start Raft, serve gRPC and HTTP on listeners the caller
//! bound (so tests bind port 0), start the leader's loops, and stop it all on shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_api::leader::{self, LeaderClient};
use kiln_api::pb;
use kiln_api::pki::TlsFiles;
use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{
    agent::AgentApi, blobs::BlobService, client::ClientService, gateway::GatewayService, http,
    raft_service::RaftService, test_queue::TestQueueService,
};
use crate::auth::{self, AuthLayer, Authenticator, audit::AuditSink, tls::ServerTls};
use crate::blobs::BlobStore;
use crate::controllers;
use crate::core::{Core, Tuning};
use crate::error::{Error, Result};
use crate::peers::Peers;
use crate::raft::{
    self, Raft, log_store::LogStore, network::Network, state_machine::StateMachineStore,
};
use crate::secrets::Keyring;

#[derive(Debug, Clone)]
pub struct Config {
    /// This coordinator's Raft id; unique in the cluster, never reused.
    pub id: u64,
    pub data_dir: PathBuf,
    /// The gRPC address peers and agents use; defaults to the bound address.
    pub advertise: Option<String>,
    /// Start a new single-member cluster if this one has no Raft state yet.
    pub bootstrap: bool,
    /// Ask the cluster at this address to add this coordinator, if it has no Raft state yet.
    pub join: Option<String>,
    pub tuning: Tuning,
    /// The cluster CA and this coordinator's certificate; `None` serves plaintext without
    /// authentication (`--insecure`, loopback only: `main.rs` checks).
    pub tls: Option<TlsFiles>,
    /// The cluster's secrets key file (`kiln tls init` writes one); `None`: no secrets.
    pub secrets_key: Option<PathBuf>,
    /// Scheduled, verified backups, where wanted.
    pub snapshots: Option<controllers::backups::Schedule>,
}

/// A running coordinator.
pub struct Coordinator {
    pub core: Arc<Core>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

pub async fn start(
    config: Config,
    grpc: TcpListener,
    http_listener: TcpListener,
) -> Result<Coordinator> {
    let grpc_addr = grpc
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let addr = config
        .advertise
        .clone()
        .unwrap_or_else(|| grpc_addr.to_string());

    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::Storage(format!("{}: {e}", config.data_dir.display())))?;
    let db = raft::open_db(&config.data_dir).map_err(|e| Error::Storage(e.to_string()))?;
    let log = LogStore::open(&db).map_err(|e| Error::Storage(e.to_string()))?;
    let sm = StateMachineStore::open(&db).map_err(|e| Error::Storage(e.to_string()))?;
    let shared = sm.shared();
    let server_tls = config.tls.as_ref().map(ServerTls::load).transpose()?;
    let keyring = match &config.secrets_key {
        Some(path) => Keyring::load(path)?,
        None => Keyring::none(),
    };
    let peers = Peers::new(
        config
            .tls
            .as_ref()
            .map(|f| f.client_config())
            .transpose()
            .map_err(|e| Error::InvalidInput(e.to_string()))?,
    );
    let raft_config = raft::config(config.tuning.election_timeout_ms)
        .validate()
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let network = Network {
        peers: peers.clone(),
    };
    let raft = Raft::new(config.id, Arc::new(raft_config), network, log, sm)
        .await
        .map_err(|e| Error::Storage(e.to_string()))?;

    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| Error::Storage(e.to_string()))?;
    if config.bootstrap && !initialized {
        let members = BTreeMap::from([(config.id, BasicNode { addr: addr.clone() })]);
        raft.initialize(members)
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        tracing::info!(id = config.id, %addr, "bootstrapped a new cluster");
    }

    let core = Arc::new(Core::new(
        config.id,
        addr.clone(),
        raft,
        shared,
        config.tuning.clone(),
        peers.clone(),
        keyring,
    ));
    let blobs = BlobStore::open(&config.data_dir)?;
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::kiln_server::KilnServer<ClientService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let (audit, audit_queue) = AuditSink::new();
    let authenticator = Arc::new(Authenticator::new(
        server_tls.as_ref().map(|t| t.verifier.clone()),
        core.state.clone(),
        audit,
    ));
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(auth::tls::MAX_STREAMS_PER_CONNECTION)
        // A span for every RPC, named by its method path.
        .trace_fn(|req| tracing::info_span!("rpc", method = %req.uri().path()))
        // Every call is authenticated and authorised before any service sees it.
        .layer(AuthLayer::new(authenticator.clone()))
        .add_service(
            pb::kiln_server::KilnServer::new(ClientService {
                core: core.clone(),
                blobs: blobs.clone(),
            })
            // Submissions carry build contexts of up to MAX_CONTEXT_BYTES.
            .max_decoding_message_size(kiln_api::spec::limits::MAX_CONTEXT_BYTES + (16 << 20)),
        )
        .add_service(pb::agent_service_server::AgentServiceServer::new(
            AgentApi { core: core.clone() },
        ))
        .add_service(pb::blobs_server::BlobsServer::new(BlobService {
            core: core.clone(),
            blobs: blobs.clone(),
        }))
        .add_service(
            pb::raft_server::RaftServer::new(RaftService { core: core.clone() })
                .max_decoding_message_size(256 << 20),
        )
        .add_service(pb::gateway_server::GatewayServer::new(GatewayService {
            core: core.clone(),
        }))
        .add_service(pb::test_queue_server::TestQueueServer::new(
            TestQueueService { core: core.clone() },
        ))
        .add_service(health_service)
        .add_service(reflection);
    let stop = shutdown.clone();
    let https = server_tls.as_ref().map(|t| t.http_acceptor.clone());
    match server_tls {
        Some(server_tls) => {
            let incoming = auth::tls::tls_incoming(grpc, server_tls.acceptor, stop.clone());
            tasks.spawn(serve_grpc(router, incoming, stop));
        }
        None => {
            let incoming = auth::tls::incoming(
                grpc,
                auth::tls::Limits::default(),
                |conn| Box::pin(async move { Ok(conn) }),
                stop.clone(),
            );
            tasks.spawn(serve_grpc(router, incoming, stop));
        }
    }
    tasks.spawn(auth::audit::run(
        core.clone(),
        audit_queue,
        shutdown.clone(),
    ));
    let stop = shutdown.clone();
    let app = http::router(core.clone(), authenticator);
    match https {
        Some(acceptor) => {
            let incoming = auth::tls::tls_incoming(http_listener, acceptor, stop.clone());
            tasks.spawn(http::serve_tls(app, incoming, stop));
        }
        None => {
            tasks.spawn(async move {
                let serve =
                    axum::serve(http_listener, app).with_graceful_shutdown(stop.cancelled_owned());
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "HTTP server stopped");
                }
            });
        }
    }

    tasks.spawn(controllers::leadership::run(core.clone(), shutdown.clone()));
    tasks.spawn(controllers::scheduling::run(core.clone(), shutdown.clone()));
    tasks.spawn(controllers::liveness::run(core.clone(), shutdown.clone()));
    tasks.spawn(controllers::rollout::run(core.clone(), shutdown.clone()));
    tasks.spawn(controllers::autoscale::run(core.clone(), shutdown.clone()));
    tasks.spawn(controllers::deploy_timeouts::run(
        core.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(controllers::triggers::run(
        core.clone(),
        config.data_dir.join("git"),
        shutdown.clone(),
    ));
    tasks.spawn(controllers::polling::run(core.clone(), shutdown.clone()));
    tasks.spawn(controllers::retention::run(core.clone(), shutdown.clone()));
    if let Some(schedule) = config.snapshots.clone() {
        tasks.spawn(controllers::backups::run(
            core.clone(),
            blobs.clone(),
            schedule,
            shutdown.clone(),
        ));
    }
    // A first member made from a backup (`kiln snapshot restore`) puts its state in place.
    if crate::api::backup::restore_file(&config.data_dir).exists() {
        let restore = crate::api::backup::restore_on_start(core.clone(), config.data_dir.clone());
        let stop = shutdown.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = restore => {}
            }
        });
    }
    if let (Some(target), false) = (config.join.clone(), initialized) {
        tasks.spawn(join_cluster(
            target,
            config.id,
            addr,
            peers.tls(),
            shutdown.clone(),
        ));
    }
    tracing::info!(id = config.id, grpc = %grpc_addr, http = %http_addr, "coordinator started");
    Ok(Coordinator {
        core,
        grpc_addr,
        http_addr,
        shutdown,
        tasks,
    })
}

impl Coordinator {
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        self.core.sessions.close_all();
        let _ = self.core.raft.shutdown().await;
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Serves gRPC on the connections `incoming` hands over until `stop`.
async fn serve_grpc<L, IO>(
    router: tonic::transport::server::Router<L>,
    incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<IO>>,
    stop: CancellationToken,
) where
    L: tower::Layer<tonic::service::Routes> + Clone + Send + 'static,
    L::Service: tower::Service<
            ::http::Request<tonic::body::Body>,
            Response = ::http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<::http::Request<tonic::body::Body>>>::Future: Send,
    <L::Service as tower::Service<::http::Request<tonic::body::Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
{
    if let Err(e) = router
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "gRPC server stopped");
    }
}

/// Asks the cluster to add this coordinator, through the leader, until it succeeds.
async fn join_cluster(
    target: String,
    id: u64,
    addr: String,
    tls: Option<tonic::transport::ClientTlsConfig>,
    shutdown: CancellationToken,
) {
    let leader = LeaderClient::new(vec![target])
        .tls(tls)
        .retry_pause(Duration::from_millis(200));
    loop {
        let join = leader.call(leader::forever(), |channel| {
            let req = pb::JoinClusterRequest {
                id,
                addr: addr.clone(),
            };
            async move {
                pb::kiln_client::KilnClient::new(channel)
                    .join_cluster(req)
                    .await
            }
        });
        let refused = tokio::select! {
            _ = shutdown.cancelled() => return,
            joined = join => match joined {
                Ok(_) => {
                    tracing::info!(id, "joined the cluster");
                    return;
                }
                Err(e) => e,
            },
        };
        tracing::info!(error = %refused, "join not accepted yet; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

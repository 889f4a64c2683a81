//! The CLI's client of the cluster: [`kiln_api::leader::LeaderClient`] (it finds the leader
//! and follows it) with the CLI's patience, its credentials and its errors.
//!
//! Credentials come from `--ca`, `--cert`, `--key` and `--token` (or `KILN_CA`, `KILN_CERT`,
//! `KILN_KEY`, `KILN_TOKEN`). With none of them, the CLI uses what `kiln dev` made in
//! `./.kiln/tls` if it is there, so that a second terminal beside `kiln dev` needs nothing.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_api::auth::Principal;
use kiln_api::leader::{CallError, LeaderClient};
use kiln_api::pb::kiln_client::KilnClient;
use kiln_api::pki::TlsFiles;
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::error::CliError;

/// Where `kiln dev` keeps its CA and certificates, under its data dir.
pub const DEV_TLS_DIR: &str = "./.kiln/tls";
/// The principal of the certificate `kiln dev` makes for its own CLI.
pub fn dev_client() -> Principal {
    Principal::Client("dev".into())
}

/// How the CLI reaches the cluster and proves who it is.
#[derive(Clone, Default)]
pub struct Credentials {
    pub tls: Option<ClientTlsConfig>,
    pub token: Option<String>,
}

impl Credentials {
    /// From the global flags (see the module note).
    pub fn from_flags(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        token: Option<String>,
        insecure: bool,
        addrs: &[String],
    ) -> Result<Credentials, CliError> {
        let dev = Path::new(DEV_TLS_DIR);
        let files = if ca.is_none() && cert.is_none() && key.is_none() && !insecure {
            let dev_files = TlsFiles::in_dir(dev, &dev_client());
            if !dev_files.ca.is_file() {
                return Err(CliError::Invalid(
                    "no TLS settings: pass --ca (with --cert and --key, or --token), or --insecure for a plaintext cluster on loopback (or run beside `kiln dev`, which writes ./.kiln/tls)".into(),
                ));
            }
            Some(if token.is_some() {
                TlsFiles {
                    cert: None,
                    key: None,
                    ..dev_files
                }
            } else {
                dev_files
            })
        } else {
            let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
            kiln_api::pki::tls_choice(ca, cert, key, insecure, &addrs).map_err(CliError::Invalid)?
        };
        let tls = files
            .map(|f| f.client_config())
            .transpose()
            .map_err(|e| CliError::Invalid(e.to_string()))?;
        Ok(Credentials { tls, token })
    }

    fn bearer(&self) -> Result<Option<MetadataValue<Ascii>>, CliError> {
        self.token
            .as_deref()
            .map(|t| {
                format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| CliError::Invalid("--token: not a kiln token".into()))
            })
            .transpose()
    }
}

/// Adds the token, if any, to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Kiln = KilnClient<InterceptedService<Channel, Bearer>>;

pub struct Client {
    leader: LeaderClient,
    bearer: Bearer,
    /// How long to keep retrying while the cluster has no reachable leader.
    patience: Duration,
}

impl Client {
    pub fn new(
        addrs: Vec<String>,
        credentials: &Credentials,
        patience: Duration,
    ) -> Result<Client, CliError> {
        Ok(Client {
            leader: LeaderClient::new(addrs).tls(credentials.tls.clone()),
            bearer: Bearer(credentials.bearer()?),
            patience,
        })
    }

    /// Runs `op` against the leader (or any coordinator, for reads that a follower answers).
    pub async fn call<T, F, Fut>(&mut self, op: F) -> Result<T, CliError>
    where
        F: Fn(Kiln) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.patience;
        let bearer = self.bearer.clone();
        let answer = self
            .leader
            .call(deadline, |channel| {
                op(KilnClient::with_interceptor(channel, bearer.clone())
                    .max_decoding_message_size(256 << 20))
            })
            .await;
        match answer {
            Ok(reply) => Ok(reply.into_inner()),
            Err(CallError::Refused(status)) => Err(CliError::from_status(status)),
            Err(CallError::Unreachable(e)) => Err(CliError::Unavailable(e)),
        }
    }
}

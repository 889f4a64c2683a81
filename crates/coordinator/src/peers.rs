//! Dialling the other coordinators (Raft, blob replication, relays, joining): one place that
//! knows whether the cluster speaks TLS, and with which certificate this coordinator calls.

use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::error::{Error, Result};

#[derive(Clone, Default)]
pub struct Peers {
    /// This coordinator's certificate and the cluster CA; `None` with `--insecure`.
    tls: Option<ClientTlsConfig>,
}

impl Peers {
    pub fn new(tls: Option<ClientTlsConfig>) -> Peers {
        Peers { tls }
    }

    pub fn tls(&self) -> Option<ClientTlsConfig> {
        self.tls.clone()
    }

    pub fn endpoint(&self, addr: &str) -> Result<Endpoint> {
        kiln_api::pki::endpoint(addr, self.tls.as_ref())
            .map(|e| {
                e.connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
            })
            .map_err(Error::Unavailable)
    }

    pub async fn channel(&self, addr: &str) -> Result<Channel> {
        self.endpoint(addr)?
            .connect()
            .await
            .map_err(|e| Error::Unavailable(format!("cannot reach {addr}: {e}")))
    }
}

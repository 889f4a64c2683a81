//! The routing table: which replicas serve each service, and what each has in flight.
//!
//! Backends are shared (`Arc`) between the table and the requests using them, and keyed by
//! (service, slot), so a new table keeps the counters of the replicas it still lists, and a
//! replica that left keeps counting its in-flight requests down until they end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kiln_api::pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One replica.
#[derive(Debug)]
pub struct Backend {
    pub service: String,
    pub slot: u32,
    pub revision: u32,
    pub address: String,
    pub in_flight: AtomicU32,
    /// `REVISION/SLOT`, the `x-kiln-replica` header of its answers.
    pub label: hyper::header::HeaderValue,
}

/// Per-service counters.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// Requests finished since the last report.
    pub requests: AtomicU64,
    pub in_flight: AtomicU32,
    /// Requests held because no replica serves.
    pub waiting: AtomicU32,
}

#[derive(Debug, Default)]
struct Inner {
    /// Routable backends by service key (`SERVICE.ENV`).
    routes: HashMap<String, Vec<Arc<Backend>>>,
    /// What a request may call a service (`SERVICE.ENV`, `ENV/SERVICE`, and in the default
    /// environment `SERVICE`) → its key.
    aliases: HashMap<String, String>,
    /// Backends that left the table with requests still in flight.
    leaving: Vec<Arc<Backend>>,
    counters: HashMap<String, Arc<ServiceCounters>>,
}

#[derive(Debug)]
pub struct Table {
    inner: Mutex<Inner>,
    /// Bumped on every new table, so held requests wake.
    changed: watch::Sender<u64>,
    /// Round-robin among equally loaded backends.
    turn: AtomicU64,
}

impl Default for Table {
    fn default() -> Table {
        Table {
            inner: Mutex::default(),
            changed: watch::channel(0).0,
            turn: AtomicU64::new(0),
        }
    }
}

impl Table {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a new endpoint table from a coordinator.
    pub fn update(&self, table: &pb::EndpointTable) {
        let mut inner = self.lock();
        let mut old: HashMap<(String, u32), Arc<Backend>> = inner
            .routes
            .drain()
            .flat_map(|(_, backends)| backends)
            .map(|b| ((b.service.clone(), b.slot), b))
            .collect();
        inner.aliases.clear();
        for s in &table.services {
            let env = if s.environment.is_empty() {
                "default"
            } else {
                s.environment.as_str()
            };
            let key = format!("{}.{env}", s.service);
            inner.aliases.insert(key.clone(), key.clone());
            inner
                .aliases
                .insert(format!("{env}/{}", s.service), key.clone());
            if s.default_environment {
                inner.aliases.insert(s.service.clone(), key.clone());
            }
            let backends: Vec<Arc<Backend>> = s
                .endpoints
                .iter()
                .map(|e| match old.remove(&(key.clone(), e.slot)) {
                    Some(b) if b.address == e.address => b,
                    _ => Arc::new(Backend {
                        service: key.clone(),
                        slot: e.slot,
                        revision: e.revision,
                        address: e.address.clone(),
                        in_flight: AtomicU32::new(0),
                        label: hyper::header::HeaderValue::from_str(&format!(
                            "{}/{}",
                            e.revision, e.slot
                        ))
                        .unwrap_or(hyper::header::HeaderValue::from_static("-")),
                    }),
                })
                .collect();
            inner.counters.entry(key.clone()).or_default();
            inner.routes.insert(key, backends);
        }
        let leaving: Vec<Arc<Backend>> = old.into_values().collect();
        inner.leaving.extend(leaving);
        inner
            .leaving
            .retain(|b| b.in_flight.load(Ordering::Relaxed) > 0);
        drop(inner);
        self.changed.send_modify(|v| *v += 1);
    }

    /// The key and counters of the service a request calls `name` (see `aliases`), if the
    /// table knows it (with or without replicas serving).
    pub fn resolve(&self, name: &str) -> Option<(String, Arc<ServiceCounters>)> {
        let inner = self.lock();
        let key = inner.aliases.get(name)?;
        Some((key.clone(), inner.counters.get(key)?.clone()))
    }

    /// The serving backend with the fewest requests in flight, skipping `tried`; ties go
    /// round the list. The request is counted on it here, under the lock, so that a table
    /// update cannot retire the backend as idle between the pick and the count.
    pub fn pick(&self, service: &str, tried: &[u32]) -> Option<Arc<Backend>> {
        let inner = self.lock();
        let backends = inner.routes.get(service)?;
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed) as usize % n;
        let picked = (0..n)
            .map(|i| &backends[(start + i) % n])
            .filter(|b| !tried.contains(&b.slot))
            .min_by_key(|b| b.in_flight.load(Ordering::Relaxed))
            .cloned()?;
        picked.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(picked)
    }

    /// Resolves when the table changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Every backend this gateway knows (routed, and leaving with requests in flight), and
    /// the per-service counters, for a traffic report.
    pub fn snapshot(&self) -> Snapshot {
        let mut inner = self.lock();
        inner
            .leaving
            .retain(|b| b.in_flight.load(Ordering::Relaxed) > 0);
        let mut backends: Vec<(Arc<Backend>, bool)> = inner
            .routes
            .values()
            .flatten()
            .map(|b| (b.clone(), true))
            .collect();
        backends.extend(inner.leaving.iter().map(|b| (b.clone(), false)));
        let counters = inner
            .counters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Snapshot { backends, counters }
    }
}

/// What a traffic report is made of.
pub struct Snapshot {
    /// Each backend, and whether it is still routed to.
    pub backends: Vec<(Arc<Backend>, bool)>,
    pub counters: Vec<(String, Arc<ServiceCounters>)>,
}

/// Follows the coordinators' endpoint stream, reconnecting (to the next address) whenever
/// it breaks.
pub async fn follow(
    table: Arc<Table>,
    coordinators: Vec<String>,
    tls: Option<tonic::transport::ClientTlsConfig>,
    shutdown: CancellationToken,
) {
    let mut next = 0usize;
    loop {
        if shutdown.is_cancelled() || coordinators.is_empty() {
            return;
        }
        let addr = &coordinators[next % coordinators.len()];
        next += 1;
        let watch = async {
            let channel = kiln_api::pki::endpoint(addr, tls.as_ref())?
                .connect()
                .await?;
            let mut client = pb::gateway_client::GatewayClient::new(channel);
            let mut stream = client
                .watch_endpoints(pb::WatchEndpointsRequest {})
                .await?
                .into_inner();
            while let Some(t) = stream.message().await? {
                table.update(&t);
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = watch => if let Err(e) = r {
                tracing::debug!(%addr, error = %e, "endpoint stream broke; trying the next coordinator");
            },
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(endpoints: &[(u32, &str)]) -> pb::EndpointTable {
        pb::EndpointTable {
            version: 1,
            services: vec![pb::ServiceEndpoints {
                service: "m".into(),
                environment: "default".into(),
                default_environment: true,
                endpoints: endpoints
                    .iter()
                    .map(|(slot, addr)| pb::Endpoint {
                        slot: *slot,
                        revision: 1,
                        address: addr.to_string(),
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn least_in_flight_wins_and_counters_survive_a_new_table() {
        let t = Table::default();
        t.update(&table(&[(1, "a:1"), (2, "b:1")]));
        let first = t.pick("m.default", &[]).unwrap();
        first.in_flight.fetch_add(3, Ordering::Relaxed);
        let other = t.pick("m.default", &[]).unwrap();
        assert_ne!(other.slot, first.slot, "the idle one");
        assert_eq!(
            other.in_flight.load(Ordering::Relaxed),
            1,
            "a pick counts its request"
        );
        assert_eq!(t.pick("m.default", &[other.slot]).unwrap().slot, first.slot);

        // The busy one leaves the table: never picked again, still counted until done.
        t.update(&table(&[(
            other.slot,
            if other.slot == 1 { "a:1" } else { "b:1" },
        )]));
        for _ in 0..4 {
            assert_eq!(t.pick("m.default", &[]).unwrap().slot, other.slot);
        }
        let backends = t.snapshot().backends;
        let leaving = backends.iter().find(|(b, _)| b.slot == first.slot).unwrap();
        assert!(!leaving.1, "reported as not routed");
        first.in_flight.store(0, Ordering::Relaxed);
        assert_eq!(t.snapshot().backends.len(), 1, "gone once idle");
        assert!(t.pick("x", &[]).is_none());
    }
}

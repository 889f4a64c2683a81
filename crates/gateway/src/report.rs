//! Traffic reports to the leader, every 100 ms (see `proto/kiln/v1/gateway.proto`). A
//! follower answers with the leader's address, which the next report goes to; a report
//! that fails gives its request counts back to the next one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kiln_api::pb;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::table::Table;

pub const INTERVAL: Duration = Duration::from_millis(100);

pub async fn run(table: Arc<Table>, config: Config, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leader: Option<String> = None;
    let mut conn: Conn = None;
    let mut next = 0usize;
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let crate::table::Snapshot { backends, counters } = table.snapshot();
        let taken: Vec<(Arc<crate::table::ServiceCounters>, u64)> = counters
            .iter()
            .map(|(_, c)| (c.clone(), c.requests.swap(0, Ordering::Relaxed)))
            .collect();
        let report = pb::TrafficReport {
            gateway: config.id.clone(),
            interval_ms: last.elapsed().as_millis() as u64,
            replicas: backends
                .iter()
                .map(|(b, routed)| pb::ReplicaTraffic {
                    service: b.service.clone(),
                    slot: b.slot,
                    in_flight: b.in_flight.load(Ordering::Relaxed),
                    routed: *routed,
                })
                .collect(),
            services: counters
                .iter()
                .zip(&taken)
                .map(|((name, c), (_, requests))| pb::ServiceTraffic {
                    service: name.clone(),
                    requests: *requests,
                    in_flight: c.in_flight.load(Ordering::Relaxed),
                    waiting: c.waiting.load(Ordering::Relaxed),
                })
                .collect(),
        };
        let addr = leader.clone().unwrap_or_else(|| {
            next += 1;
            config.coordinators[next % config.coordinators.len().max(1)].clone()
        });
        if conn.as_ref().is_none_or(|(a, _)| *a != addr) {
            conn = None;
        }
        match send(&mut conn, &addr, report).await {
            Ok(()) => {
                leader = Some(addr);
                last = Instant::now();
            }
            Err(hint) => {
                leader = hint;
                conn = None;
                for (c, n) in taken {
                    c.requests.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
    }
}

type Conn = Option<(
    String,
    pb::gateway_client::GatewayClient<tonic::transport::Channel>,
)>;

/// Sends one report on the open connection (opening it first if needed); on failure
/// answers the leader a follower named, if any.
async fn send(
    conn: &mut Conn,
    addr: &str,
    report: pb::TrafficReport,
) -> Result<(), Option<String>> {
    let call = async {
        if conn.is_none() {
            let client = pb::gateway_client::GatewayClient::connect(format!("http://{addr}"))
                .await
                .map_err(|_| None)?;
            *conn = Some((addr.to_string(), client));
        }
        let (_, client) = conn.as_mut().ok_or(None)?;
        client.report_traffic(report).await.map_err(|status| {
            status
                .metadata()
                .get(kiln_api::LEADER_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })?;
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .unwrap_or(Err(None))
}

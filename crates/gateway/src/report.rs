//! Traffic reports to the leader, every 100 ms (see `proto/kiln/v1/gateway.proto`), through
//! [`LeaderClient`], which follows the leader; a report that is not delivered within a
//! second gives its request counts back to the next one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kiln_api::leader::LeaderClient;
use kiln_api::pb;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::table::Table;

pub const INTERVAL: Duration = Duration::from_millis(100);

pub async fn run(table: Arc<Table>, config: Config, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let leader = LeaderClient::new(config.coordinators.clone())
        .tls(config.tls.clone())
        .connect_timeout(Duration::from_millis(300))
        .retry_pause(Duration::from_millis(20));
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
        // Undelivered within a second, a report is dropped; its counts go with the next.
        let deadline = Instant::now() + Duration::from_secs(1);
        let send = leader.call(deadline, |channel| {
            let report = report.clone();
            async move {
                pb::gateway_client::GatewayClient::new(channel)
                    .report_traffic(report)
                    .await
            }
        });
        let sent = tokio::select! {
            _ = shutdown.cancelled() => return,
            sent = send => sent,
        };
        match sent {
            Ok(_) => last = Instant::now(),
            Err(e) => {
                tracing::debug!(error = %e, "traffic report not delivered");
                for (c, n) in taken {
                    c.requests.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
    }
}

//! What the service gateways report, kept in the leader's memory (never replicated, like
//! heartbeats: gateways report again to a new leader within a fraction of a second).
//!
//! Two readers: the rollout controller asks whether a drained replica still has requests in
//! flight at any gateway ([`Traffic::drained`]) before it is killed, and the autoscaler
//! reads each service's concurrency (in flight plus held) and request rate.

use std::collections::HashMap;

use kiln_api::pb;

/// A gateway that has not reported for this long is ignored (gone, or cut off).
pub const FRESH_MS: i64 = 2_000;

#[derive(Debug, Default)]
struct Report {
    at_ms: i64,
    interval_ms: u64,
    /// (service, slot) → (in flight, still routed to)
    replicas: HashMap<(String, u32), (u32, bool)>,
    services: HashMap<String, pb::ServiceTraffic>,
}

#[derive(Debug, Default)]
pub struct Traffic {
    /// When this view started (leadership gained): until every gateway had the chance to
    /// report, an empty view proves nothing.
    since_ms: i64,
    gateways: HashMap<String, Report>,
    /// The autoscaler's last decision per service, for `kiln services`.
    autoscale: HashMap<String, pb::AutoscaleView>,
}

impl Traffic {
    /// A view that starts now: drains wait for the gateways to report to it.
    pub fn new(now_ms: i64) -> Traffic {
        Traffic {
            since_ms: now_ms,
            ..Traffic::default()
        }
    }

    /// Forgets everything: a new leader hears the gateways afresh.
    pub fn reset(&mut self, now_ms: i64) {
        *self = Traffic {
            since_ms: now_ms,
            ..Traffic::default()
        };
    }

    pub fn record(&mut self, report: pb::TrafficReport, now_ms: i64) {
        let r = Report {
            at_ms: now_ms,
            interval_ms: report.interval_ms,
            replicas: report
                .replicas
                .into_iter()
                .map(|t| ((t.service, t.slot), (t.in_flight, t.routed)))
                .collect(),
            services: report
                .services
                .into_iter()
                .map(|t| (t.service.clone(), t))
                .collect(),
        };
        self.gateways.insert(report.gateway, r);
    }

    fn fresh(&self, now_ms: i64) -> impl Iterator<Item = &Report> {
        self.gateways
            .values()
            .filter(move |r| now_ms - r.at_ms <= FRESH_MS)
    }

    /// Requests in flight to one replica, over all live gateways.
    pub fn in_flight(&self, service: &str, slot: u32, now_ms: i64) -> u32 {
        let key = (service.to_string(), slot);
        self.fresh(now_ms)
            .filter_map(|r| r.replicas.get(&key))
            .map(|(n, _)| n)
            .sum()
    }

    /// Every live gateway has reported since `since_ms` and neither routes to the replica
    /// nor has a request in flight to it. With no live gateway, nothing can be in flight —
    /// once this view is old enough for every gateway to have reported to it.
    pub fn drained(&self, service: &str, slot: u32, since_ms: i64, now_ms: i64) -> bool {
        if now_ms - self.since_ms < FRESH_MS {
            return false;
        }
        let key = (service.to_string(), slot);
        self.fresh(now_ms).all(|r| {
            r.at_ms > since_ms
                && r.replicas
                    .get(&key)
                    .is_none_or(|(n, routed)| *n == 0 && !routed)
        })
    }

    /// Requests in flight or held for a service, over all live gateways.
    pub fn concurrency(&self, service: &str, now_ms: i64) -> f64 {
        self.fresh(now_ms)
            .filter_map(|r| r.services.get(service))
            .map(|t| f64::from(t.in_flight + t.waiting))
            .sum()
    }

    /// Requests held because no replica serves.
    pub fn waiting(&self, service: &str, now_ms: i64) -> u32 {
        self.fresh(now_ms)
            .filter_map(|r| r.services.get(service))
            .map(|t| t.waiting)
            .sum()
    }

    /// Requests per second finished for a service, over all live gateways.
    pub fn rps(&self, service: &str, now_ms: i64) -> f64 {
        self.fresh(now_ms)
            .filter_map(|r| {
                let t = r.services.get(service)?;
                (r.interval_ms > 0).then(|| t.requests as f64 * 1000.0 / r.interval_ms as f64)
            })
            .sum()
    }

    pub fn autoscale_view(&self, service: &str) -> Option<pb::AutoscaleView> {
        self.autoscale.get(service).cloned()
    }

    pub fn set_autoscale_view(&mut self, service: &str, view: pb::AutoscaleView) {
        self.autoscale.insert(service.to_string(), view);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(gateway: &str, slot: u32, in_flight: u32, routed: bool) -> pb::TrafficReport {
        pb::TrafficReport {
            gateway: gateway.into(),
            replicas: vec![pb::ReplicaTraffic {
                service: "m".into(),
                slot,
                in_flight,
                routed,
            }],
            services: vec![pb::ServiceTraffic {
                service: "m".into(),
                requests: 50,
                in_flight,
                waiting: 1,
            }],
            interval_ms: 100,
        }
    }

    #[test]
    fn a_replica_is_drained_once_every_gateway_says_so_after_the_drain() {
        let mut t = Traffic::default();
        t.record(report("a", 3, 2, true), 11_000);
        t.record(report("b", 3, 0, false), 11_000);
        assert!(
            !t.drained("m", 3, 11_500, 11_600),
            "no report since the drain"
        );
        t.record(report("a", 3, 1, false), 11_700);
        t.record(report("b", 3, 0, false), 11_700);
        assert!(
            !t.drained("m", 3, 11_500, 11_750),
            "a request still in flight"
        );
        t.record(report("a", 3, 0, false), 11_800);
        assert!(t.drained("m", 3, 11_500, 11_850));
        assert!(
            t.drained("m", 3, 19_000, 19_000),
            "gone gateways do not hold a drain"
        );
        assert_eq!(t.rps("m", 11_850), 1000.0, "50 per 100 ms at two gateways");
        assert_eq!(t.concurrency("m", 11_850), 2.0, "held requests count");
        t.reset(20_000);
        assert!(
            !t.drained("m", 3, 19_000, 20_500),
            "a new leader waits for the gateways"
        );
        assert!(t.drained("m", 3, 19_000, 22_001));
    }
}

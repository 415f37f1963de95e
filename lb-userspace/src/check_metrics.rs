//! The metrics recorded as health checks run (the rest of `/metrics` is read at scrape time).
use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    service: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    service: String,
    backend: String,
    result: String,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. about 1 s: a healthy check on a LAN takes well under a millisecond.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 13))
}

/// Health-check latency and results, per backend, since the agent started.
pub struct CheckMetrics {
    check_latency: Family<BackendLabels, Histogram, fn() -> Histogram>,
    checks: Family<CheckLabels, Counter>,
}

impl Default for CheckMetrics {
    fn default() -> Self {
        Self {
            check_latency: Family::new_with_constructor(latency_histogram),
            checks: Family::default(),
        }
    }
}

impl CheckMetrics {
    pub fn observe_check(&self, service: &str, backend: &str, latency: Duration, ok: bool) {
        let labels = BackendLabels {
            service: service.to_string(),
            backend: backend.to_string(),
        };
        self.check_latency
            .get_or_create(&labels)
            .observe(latency.as_secs_f64());
        let result = if ok { "ok" } else { "failed" };
        self.checks
            .get_or_create(&CheckLabels {
                service: service.into(),
                backend: backend.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Adds both families to a scrape's registry (they are shared, not copied).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "health_check_duration_seconds",
            "Time a health check took",
            self.check_latency.clone(),
        );
        registry.register(
            "health_checks",
            "Health checks run, by result",
            self.checks.clone(),
        );
    }
}

//! The relay's own metrics, on its own registry (the relay runs as its own
//! process, without the exporter's store).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::telemetry::{COMMIT, VERSION};

pub struct RelayMetrics {
    registry: Registry,
    /// Webhook requests by receiver (configured names or `unknown`) and HTTP code.
    pub requests: IntCounterVec,
    /// Notifications accepted (persisted) by receiver.
    pub received: IntCounterVec,
    pub duplicates: IntCounterVec,
    /// Accepted notifications no channel's matchers selected.
    pub unrouted: IntCounterVec,
    pub delivered: IntCounterVec,
    /// Notifications given up on, by channel and bounded reason.
    pub failed: IntCounterVec,
    /// Attempts that failed and will be retried, by channel and reason.
    pub retries: IntCounterVec,
    /// Notifications held back by flood control and sent as a summary.
    pub folded: IntCounterVec,
    pub summaries: IntCounterVec,
    pub outbox_depth: IntGauge,
    pub persist_errors: IntCounter,
    /// From acceptance to delivery, by channel.
    pub latency: HistogramVec,
    pub reloads: IntCounterVec,
    pub config_ok: IntGauge,
}

impl RelayMetrics {
    pub fn new() -> RelayMetrics {
        let registry = Registry::new();
        let cv = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let requests = cv(
            "vitals_relay_requests_total",
            "Webhook requests by receiver and HTTP status code.",
            &["receiver", "code"],
        );
        let received = cv(
            "vitals_relay_notifications_received_total",
            "Notifications accepted and persisted, by receiver.",
            &["receiver"],
        );
        let duplicates = cv(
            "vitals_relay_notifications_deduplicated_total",
            "Notifications answered 200 but not delivered again because their key was seen within the dedup window.",
            &["receiver"],
        );
        let unrouted = cv(
            "vitals_relay_notifications_unrouted_total",
            "Notifications whose alerts matched none of the receiver's channels.",
            &["receiver"],
        );
        let delivered = cv(
            "vitals_relay_notifications_delivered_total",
            "Notifications delivered, by channel.",
            &["channel"],
        );
        let failed = cv(
            "vitals_relay_notifications_failed_total",
            "Notifications given up on (permanent failure or expiry), by channel and reason.",
            &["channel", "reason"],
        );
        let retries = cv(
            "vitals_relay_delivery_retries_total",
            "Delivery attempts that failed transiently and will be retried, by channel and reason.",
            &["channel", "reason"],
        );
        let folded = cv(
            "vitals_relay_notifications_folded_total",
            "Notifications over the rate limit, folded into a summary message, by channel.",
            &["channel"],
        );
        let summaries = cv(
            "vitals_relay_summaries_sent_total",
            "Flood-control summary messages delivered, by channel.",
            &["channel"],
        );
        let outbox_depth = IntGauge::new(
            "vitals_relay_outbox_pending",
            "Notifications in the outbox waiting for delivery.",
        )
        .expect("valid metric");
        let persist_errors = IntCounter::new(
            "vitals_relay_persist_errors_total",
            "Webhooks answered 503 because the outbox could not persist them.",
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "vitals_relay_delivery_latency_seconds",
                "Time from accepting a notification to its delivery, by channel.",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
            ]),
            &["channel"],
        )
        .expect("valid metric");
        let reloads = cv(
            "vitals_relay_config_reloads_total",
            "Configuration reloads by result (success or failure).",
            &["result"],
        );
        let config_ok = IntGauge::new(
            "vitals_relay_config_last_reload_successful",
            "Whether the last configuration reload succeeded (1) or was rejected (0).",
        )
        .expect("valid metric");
        config_ok.set(1);
        let build_info = prometheus::IntGaugeVec::new(
            Opts::new(
                "vitals_build_info",
                "Version and commit vitals was built from; always 1.",
            ),
            &["version", "commit"],
        )
        .expect("valid metric");
        build_info.with_label_values(&[VERSION, COMMIT]).set(1);
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(received.clone()),
            Box::new(duplicates.clone()),
            Box::new(unrouted.clone()),
            Box::new(delivered.clone()),
            Box::new(failed.clone()),
            Box::new(retries.clone()),
            Box::new(folded.clone()),
            Box::new(summaries.clone()),
            Box::new(outbox_depth.clone()),
            Box::new(persist_errors.clone()),
            Box::new(latency.clone()),
            Box::new(reloads.clone()),
            Box::new(config_ok.clone()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        RelayMetrics {
            registry,
            requests,
            received,
            duplicates,
            unrouted,
            delivered,
            failed,
            retries,
            folded,
            summaries,
            outbox_depth,
            persist_errors,
            latency,
            reloads,
            config_ok,
        }
    }

    /// Make sure every configured channel and receiver shows up at 0.
    pub fn touch(&self, receivers: &[&str], channels: &[&str]) {
        for r in receivers {
            self.received.with_label_values(&[r]);
            self.duplicates.with_label_values(&[r]);
        }
        for c in channels {
            self.delivered.with_label_values(&[c]);
            self.latency.with_label_values(&[c]);
        }
    }

    /// The registry, so the HTTP server can add its connection metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "Encoding relay metrics failed.");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

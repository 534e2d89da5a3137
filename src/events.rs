//! The in-process event stream: anomaly detections and rule hits (e.g. a
//! transaction flagged as potential fraud). The live dashboard and the log
//! subscribe to it. A slow subscriber misses events (broadcast lag), it
//! never makes the publisher wait or buffer without bound.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

/// How urgent an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// What produced it: `anomaly` (a detector) or `rule` (an event rule).
    pub kind: &'static str,
    pub severity: Severity,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Source instance name.
    pub source: String,
    /// Metric family name of the series.
    pub metric: String,
    /// Labels of the series, rendered (`{a="x"}`).
    pub labels: String,
    pub value: f64,
    /// Expected value and band, when the producer has them.
    pub expected: Option<f64>,
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    /// Anomaly score in [0, 1], or 1 for a rule hit.
    pub score: f64,
    /// Detector or rule name.
    pub reason: String,
}

/// Publisher side of the event stream; cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl EventBus {
    /// A bus whose subscribers may fall `capacity` events behind.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        EventBus { tx }
    }

    /// Publish; having no subscriber is not an error.
    pub fn publish(&self, event: Event) {
        let _ = self.tx.send(Arc::new(event));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(4096)
    }
}

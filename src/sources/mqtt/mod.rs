//! The MQTT source: subscribe to topic filters on one broker and map every
//! message (topic segments + payload) to samples.
//!
//! Exactly one task polls the rumqttc event loop. On a connection error it
//! logs, marks the source down and sleeps with exponential backoff before
//! polling again (rumqttc alone would reconnect in a tight loop). Samples are
//! collected in one batch per burst of messages read from the socket, so the
//! ingest channel sees one send per burst, not one per message.
//!
//! Per subscription the source keeps bounded state: the label sets it has
//! produced (for the cardinality budget) and, when an expected reporting
//! interval is configured, one entry per device for the silent-sensor
//! gauges `<prefix>_device_up` and `<prefix>_device_last_seen_timestamp_seconds`.
//!
//! The parts: [`config`] (the `[[sources]] type = "mqtt"` section and its
//! checks), [`topic`] (topic patterns with label captures), `ingest` (messages
//! to samples, budgets and silent devices: everything but the connection),
//! `conn` (the rumqttc client of either protocol version; its `poll` returns
//! what arrived) and `task` (the loop: polls, hands each publish to the
//! ingest side, batches and backs off).

mod config;
mod conn;
mod ingest;
mod task;
mod topic;

pub use config::{MqttConfig, Protocol, Secret, SubscriptionConfig, TlsConfig};
pub use task::run;
pub use topic::match_topic;

impl super::Source for MqttConfig {
    const KIND: &'static str = "mqtt";
    type Built = ();

    fn name(&self) -> &str {
        &self.name
    }

    fn build(&self) -> Result<(), crate::key_error::KeyError> {
        Ok(self.validate()?)
    }

    fn start(&self, _: &(), ctx: super::SourceContext, health: super::Health) -> super::Started {
        super::Started::task(run(self.clone(), ctx, health))
    }

    fn secret_inputs(&self) -> Vec<(&'static str, super::SecretInput<'_>)> {
        let mut out = Vec::new();
        super::secret_input(
            &mut out,
            "password",
            self.password_env.as_deref(),
            self.password_file.as_deref(),
        );
        out
    }
}

#[cfg(test)]
mod tests;

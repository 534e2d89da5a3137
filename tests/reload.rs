//! Hot reload: SIGHUP and POST /-/reload apply a valid configuration without
//! touching unchanged sources, and reject an invalid one, keeping the
//! running configuration.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Broker, Vitals, http, sample_value, wait_for};

const WAIT: Duration = Duration::from_secs(30);

fn webhook(name: &str) -> String {
    format!(
        "[[sources]]\ntype = \"webhook\"\nname = \"{name}\"\nformat = \"json\"\n[[sources.metrics]]\nname = \"{name}_events_total\"\ntype = \"counter\"\nhelp = \"Events.\"\n"
    )
}

fn post(v: &Vitals, path: &str, body: &str) -> u16 {
    http(
        v.addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .unwrap()
    .0
}

fn reload(v: &Vitals) -> (u16, String) {
    http(v.addr, "POST", "/-/reload", &[], b"").unwrap()
}

#[test]
fn reload_keeps_unchanged_sources_adds_new_ones_and_rejects_bad_configs() {
    let base = "[system]\nenabled = false\n".to_string();
    let v = Vitals::start(&format!("{base}{}", webhook("a")));
    let config = v.config_dir().join("vitals.toml");
    assert_eq!(post(&v, "/ingest/a", r#"{"id":"1"}"#), 200);
    assert_eq!(post(&v, "/ingest/a", r#"{"id":"2"}"#), 200);
    wait_for(Duration::from_secs(10), "a's counter", || {
        (sample_value(&v.metrics(), "a_events_total", &[]) == Some(2.0)).then_some(())
    });
    let m = v.metrics();
    assert_eq!(
        sample_value(&m, "vitals_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert_eq!(post(&v, "/ingest/b", "{}"), 404, "b does not exist yet");

    // A valid change: a kept, b started.
    std::fs::write(&config, format!("{base}{}{}", webhook("a"), webhook("b"))).unwrap();
    let (status, summary) = reload(&v);
    assert_eq!(status, 200, "{summary}");
    assert!(
        summary.contains("kept [a]") && summary.contains("started [b]"),
        "{summary}"
    );
    assert_eq!(post(&v, "/ingest/b", r#"{"id":"x"}"#), 200);
    let m = wait_for(Duration::from_secs(10), "b's counter", || {
        let m = v.metrics();
        (sample_value(&m, "b_events_total", &[]) == Some(1.0)).then_some(m)
    });
    assert_eq!(
        sample_value(&m, "a_events_total", &[]),
        Some(2.0),
        "a's series survived the reload"
    );

    // An invalid file is rejected; everything keeps running.
    std::fs::write(
        &config,
        format!("{base}{}\n[web]\nlisten_adress = \"x\"\n", webhook("a")),
    )
    .unwrap();
    let (status, error) = reload(&v);
    assert_eq!(status, 400);
    assert!(error.contains("key `web.listen_adress`"), "{error}");
    let m = v.metrics();
    assert_eq!(
        sample_value(&m, "vitals_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(
        post(&v, "/ingest/b", r#"{"id":"y"}"#),
        200,
        "b still runs after a rejected reload"
    );
    assert_eq!(post(&v, "/ingest/a", r#"{"id":"3"}"#), 200);

    // SIGHUP with b removed: b's route and series go away, a stays.
    std::fs::write(&config, format!("{base}{}", webhook("a"))).unwrap();
    let status = Command::new("kill")
        .arg("-HUP")
        .arg(v.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let m = wait_for(Duration::from_secs(10), "b removed by SIGHUP", || {
        let m = v.metrics();
        (sample_value(&m, "vitals_config_last_reload_successful", &[]) == Some(1.0)
            && sample_value(&m, "b_events_total", &[]).is_none())
        .then_some(m)
    });
    assert_eq!(sample_value(&m, "a_events_total", &[]), Some(3.0));
    assert_eq!(post(&v, "/ingest/b", "{}"), 404);
}

#[test]
fn reload_restarts_the_system_source_when_its_settings_change() {
    let v = Vitals::start(
        "[system]\ninterval = \"200ms\"\n[[process_groups]]\nname = \"one\"\npids = [1]\n",
    );
    let config = v.config_dir().join("vitals.toml");
    wait_for(Duration::from_secs(10), "group one", || {
        v.metrics().contains("group=\"one\"").then_some(())
    });
    std::fs::write(
        &config,
        "[system]\ninterval = \"200ms\"\n[[process_groups]]\nname = \"two\"\npids = [1]\n",
    )
    .unwrap();
    let (status, summary) = reload(&v);
    assert_eq!(status, 200);
    assert!(summary.contains("restarted [system]"), "{summary}");
    wait_for(
        Duration::from_secs(10),
        "group two replaces group one",
        || {
            let m = v.metrics();
            (m.contains("group=\"two\"") && !m.contains("group=\"one\"")).then_some(())
        },
    );
    // A setting that needs a restart is reported as such.
    std::fs::write(&config, "[system]\ninterval = \"200ms\"\n[[process_groups]]\nname = \"two\"\npids = [1]\n[store]\ningest_queue = 7\n").unwrap();
    let (status, summary) = reload(&v);
    assert_eq!(status, 200);
    assert!(
        summary.contains("kept [system]") && summary.contains("store.ingest_queue"),
        "{summary}"
    );
}
fn mqtt_source(port: u16, subscriptions: &[&str]) -> String {
    let mut s = format!(
        "[system]\nenabled = false\n[[sources]]\ntype = \"mqtt\"\nname = \"plant\"\nhost = \"127.0.0.1\"\nport = {port}\n"
    );
    for sub in subscriptions {
        s.push_str(&format!(
            "[[sources.subscriptions]]\nname = \"{sub}\"\ntopic = \"{sub}/+device\"\n[sources.subscriptions.mapping]\n\
             [[sources.subscriptions.mapping.metrics]]\nname = \"{sub}_celsius\"\npath = \"t\"\n"
        ));
    }
    s
}

/// Publish to `topic` until `name{parts}` shows `want`: right after a
/// (re)start the source may not be subscribed yet, and a message the broker
/// delivers to nobody is lost.
fn publish_until(
    b: &Broker,
    v: &Vitals,
    topic: &str,
    payload: &str,
    name: &str,
    parts: &[&str],
    want: f64,
) {
    wait_for(WAIT, &format!("{name}{parts:?} == {want}"), || {
        b.publish(topic, payload);
        std::thread::sleep(Duration::from_millis(100));
        (sample_value(&v.metrics(), name, parts) == Some(want)).then_some(())
    });
}

#[test]
fn changed_mqtt_source_keeps_exporting_its_self_metrics_after_reload_and_a_removed_one_leaves_nothing()
 {
    let broker = Broker::start();
    let v = Vitals::start(&mqtt_source(broker.port, &["boiler"]));
    let config = v.config_dir().join("vitals.toml");
    publish_until(
        &broker,
        &v,
        "boiler/b1",
        r#"{"t": 71}"#,
        "boiler_celsius",
        &["device=\"b1\""],
        71.0,
    );
    let src = "source=\"plant\"";
    let m = v.metrics();
    assert_eq!(sample_value(&m, "vitals_mqtt_connected", &[src]), Some(1.0));
    assert!(
        sample_value(
            &m,
            "vitals_mqtt_messages_total",
            &[src, "subscription=\"boiler\""]
        )
        .is_some_and(|n| n >= 1.0)
    );

    // A new subscription changes the source: it restarts and must register
    // its self-metrics again (they used to clash with the old ones, which
    // stayed behind frozen at connected 0).
    std::fs::write(&config, mqtt_source(broker.port, &["boiler", "chiller"])).unwrap();
    let (status, summary) = reload(&v);
    assert_eq!(status, 200, "{summary}");
    assert!(summary.contains("restarted [plant]"), "{summary}");
    publish_until(
        &broker,
        &v,
        "chiller/c1",
        r#"{"t": 6}"#,
        "chiller_celsius",
        &["device=\"c1\""],
        6.0,
    );
    publish_until(
        &broker,
        &v,
        "boiler/b1",
        r#"{"t": 72}"#,
        "boiler_celsius",
        &["device=\"b1\""],
        72.0,
    );
    let m = wait_for(WAIT, "the restarted source's self-metrics", || {
        let m = v.metrics();
        (sample_value(&m, "vitals_mqtt_connected", &[src]) == Some(1.0)
            && sample_value(&m, "vitals_mqtt_subscribed", &[src]) == Some(1.0))
        .then_some(m)
    });
    assert!(
        sample_value(
            &m,
            "vitals_mqtt_messages_total",
            &[src, "subscription=\"chiller\""]
        )
        .is_some_and(|n| n >= 1.0),
        "the new subscription is counted"
    );
    assert_eq!(m.matches("# TYPE vitals_mqtt_connected ").count(), 1);
    assert_eq!(
        m.matches("vitals_mqtt_connected{").count(),
        1,
        "one source, one gauge"
    );

    // Removed: no series and no self-metrics of it remain, and none come back.
    std::fs::write(&config, "[system]\nenabled = false\n").unwrap();
    let (status, summary) = reload(&v);
    assert_eq!(status, 200, "{summary}");
    assert!(summary.contains("stopped [plant]"), "{summary}");
    // The removal is queued behind the source's last batch; the series go
    // once the ingest task reaches it. (That no queued batch brings them
    // back is pinned deterministically by the supervisor's unit test.)
    wait_for(
        WAIT,
        "the removed source's series and self-metrics gone",
        || {
            let m = v.metrics();
            ["boiler_celsius", "chiller_celsius", "vitals_mqtt_"]
                .iter()
                .all(|name| !m.contains(name))
                .then_some(())
        },
    );
    broker.publish("boiler/b1", r#"{"t": 73}"#);
    let (status, _) = reload(&v);
    assert_eq!(status, 200);
    let m = v.metrics();
    assert!(!m.contains("boiler_celsius"), "{m}");
}

#[test]
fn reload_rebuilds_pipeline_filters_and_detectors() {
    let rule = |scale: u32| {
        format!(
            "[system]\nenabled = false\n{}[[pipeline]]\nmetric = \"a_events_total\"\nscale = {scale}\n",
            webhook("a")
        )
    };
    let v = Vitals::start(&rule(10));
    let config = v.config_dir().join("vitals.toml");
    assert_eq!(post(&v, "/ingest/a", r#"{"id":"1"}"#), 200);
    wait_for(WAIT, "scaled by 10", || {
        (sample_value(&v.metrics(), "a_events_total", &[]) == Some(10.0)).then_some(())
    });
    // A second sample lets the detectors score the series (counters are
    // scored as rates).
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(post(&v, "/ingest/a", r#"{"id":"2"}"#), 200);
    wait_for(WAIT, "scaled by 10 and scored", || {
        let m = v.metrics();
        (sample_value(&m, "a_events_total", &[]) == Some(20.0)
            && sample_value(&m, "vitals_anomaly_score", &["metric=\"a_events_total\""]).is_some())
        .then_some(())
    });

    // A new scale applies to every sample after the reload answered.
    std::fs::write(&config, rule(100)).unwrap();
    let (status, summary) = reload(&v);
    assert_eq!(status, 200, "{summary}");
    assert!(
        summary.contains("kept [a]") && summary.contains("rebuilt [pipeline]"),
        "{summary}"
    );
    assert!(!summary.contains("restart:"), "{summary}");
    assert_eq!(post(&v, "/ingest/a", r#"{"id":"3"}"#), 200);
    wait_for(WAIT, "scaled by 100", || {
        (sample_value(&v.metrics(), "a_events_total", &[]) == Some(300.0)).then_some(())
    });

    // Detection switched off: the detector state is gone at once.
    std::fs::write(&config, format!("{}[detect]\nenabled = false\n", rule(100))).unwrap();
    let (status, summary) = reload(&v);
    assert_eq!(status, 200, "{summary}");
    assert!(summary.contains("rebuilt [detect]"), "{summary}");
    let m = v.metrics();
    assert!(!m.contains("vitals_anomaly_score{"), "{m}");
    assert_eq!(post(&v, "/ingest/a", r#"{"id":"4"}"#), 200);
    wait_for(WAIT, "ingest goes on without detection", || {
        (sample_value(&v.metrics(), "a_events_total", &[]) == Some(400.0)).then_some(())
    });
    assert!(!v.metrics().contains("vitals_anomaly_score{"));
}

#[test]
fn removed_source_takes_its_health_series_and_counters_with_it() {
    let base = "[system]\nenabled = false\n".to_string();
    let v = Vitals::start(&format!("{base}{}{}", webhook("a"), webhook("b")));
    let config = v.config_dir().join("vitals.toml");
    assert_eq!(post(&v, "/ingest/a", r#"{"id":"1"}"#), 200);
    assert_eq!(post(&v, "/ingest/b", r#"{"id":"1"}"#), 200);
    assert_eq!(post(&v, "/ingest/b", "not json"), 400);
    let health = [
        "vitals_source_up",
        "vitals_source_last_success_timestamp_seconds",
        "vitals_source_collection_duration_seconds",
        "vitals_samples_ingested_total",
        "vitals_source_errors_total",
    ];
    wait_for(WAIT, "b's health series", || {
        let m = v.metrics();
        health
            .iter()
            .all(|n| sample_value(&m, n, &["source=\"b\""]).is_some())
            .then_some(())
    });

    std::fs::write(&config, format!("{base}{}", webhook("a"))).unwrap();
    let (status, summary) = reload(&v);
    assert_eq!(status, 200, "{summary}");
    assert!(summary.contains("stopped [b]"), "{summary}");
    // The counters go when ingest reaches the removal queued behind b's
    // last batch; the health series at once.
    let m = wait_for(WAIT, "b's health series gone", || {
        let m = v.metrics();
        (!m.contains("source=\"b\"")).then_some(m)
    });
    for name in &health[..4] {
        assert!(
            sample_value(&m, name, &["source=\"a\""]).is_some(),
            "{name} of the kept source a stays:\n{m}"
        );
    }
    // Nothing brings them back (another reload, time passing).
    let (status, _) = reload(&v);
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let m = v.metrics();
    assert!(!m.contains("source=\"b\""), "{m}");
}

/// Reload used to compare `Debug` renderings, where secrets print redacted,
/// and never read a secret file again: a rotated token kept the old one.
#[test]
fn reload_reads_a_rotated_secret_file_and_restarts_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, "old-token\n").unwrap();
    let cfg = format!(
        "[system]\nenabled = false\n{}[sources.auth]\nscheme = \"bearer\"\nsecret_file = \"{}\"\n",
        webhook("a"),
        secret.display()
    );
    let v = Vitals::start(&cfg);
    let push = |token: &str| {
        http(
            v.addr,
            "POST",
            "/ingest/a",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &format!("Bearer {token}")),
            ],
            b"{}",
        )
        .unwrap()
        .0
    };
    assert_eq!(push("old-token"), 200);
    assert_eq!(push("new-token"), 401);

    // Same configuration file, new secret.
    std::fs::write(&secret, "new-token\n").unwrap();
    let (status, summary) = reload(&v);
    assert_eq!(status, 200, "{summary}");
    assert!(summary.contains("restarted [a]"), "{summary}");
    assert_eq!(push("new-token"), 200);
    assert_eq!(push("old-token"), 401, "the old secret no longer works");

    // Nothing changed: kept.
    let (_, summary) = reload(&v);
    assert!(summary.contains("kept [a]"), "{summary}");
}

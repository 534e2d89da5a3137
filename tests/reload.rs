//! Hot reload: SIGHUP and POST /-/reload apply a valid configuration without
//! touching unchanged sources, and reject an invalid one, keeping the
//! running configuration.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Vitals, http, sample_value, wait_for};

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

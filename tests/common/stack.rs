//! The shipped monitoring stack's files the stack tests read: YAML files,
//! the compose vitals configuration pointed at a test broker, and the
//! recorded series of the shipped rules.

use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

use super::process::root;

pub fn yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert_eq!(docs.len(), 1, "{path:?}: one YAML document");
    docs.remove(0)
}

/// The compose stack's vitals configuration (deploy/vitals.toml) pointed at
/// the test broker, plus a process group that never runs so
/// ProcessGroupDown and the "down" rows of the dashboards have data.
pub fn deploy_config(broker_port: u16) -> String {
    let shipped = std::fs::read_to_string(root().join("deploy/vitals.toml")).unwrap();
    let cfg = shipped
        .replace("host = \"mosquitto\"", "host = \"127.0.0.1\"")
        .replace("port = 1883", &format!("port = {broker_port}"))
        .replace("interval = \"5s\"", "interval = \"500ms\"");
    assert!(
        cfg.contains(&format!("port = {broker_port}")),
        "broker port replaced"
    );
    format!(
        "{cfg}\n[[process_groups]]\nname = \"vitals\"\ncomm = [\"vitals\"]\n\n\
         [[process_groups]]\nname = \"batch-jobs\"\ncomm = [\"no-such-proc-y\"]\n"
    )
}

/// Names of the series the shipped recording rules produce.
pub fn recorded_series() -> Vec<String> {
    let doc = yaml(&root().join("alerting/prometheus/rules/recording.yml"));
    let mut out = Vec::new();
    for group in doc["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            if let Some(r) = rule["record"].as_str() {
                out.push(r.to_string());
            }
        }
    }
    assert!(out.len() >= 10, "{out:?}");
    out
}

//! `vitals relay`'s front door and configuration: refused input and
//! credentials, reload, `vitals check` of relay files, the shipped examples,
//! and the web configuration file (TLS and basic auth) on its listener.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::certs::make_certs;
use crate::common::relay::*;
use crate::common::{free_port, get, require, wait_for};

#[test]
fn refuses_bad_input_and_bad_credentials_without_persisting() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(Duration::ZERO, "{}");
    let hash = bcrypt_hash("am-password");
    let config = relay_head(dir.path()).replace("[relay]\n", "[relay]\nmax_body_bytes = 4096\n")
        + &bearer_receiver("ops", &["sms"])
        + &format!(
            "\n[[relay.receivers]]\nname = \"basic\"\nauth = {{ type = \"basic\", users = {{ alertmanager = \"{hash}\" }} }}\nchannels = [\"sms\"]\n"
        )
        + "\n[[relay.receivers]]\nname = \"grafana\"\nauth = { type = \"hmac\", secret = \"env:RELAY_TEST_TOKEN\", header = \"X-Grafana-Alerting-Signature\", timestamp_header = \"X-Grafana-Alerting-Signature-Timestamp\" }\nchannels = [\"sms\"]\n"
        + &sms_channel("sms", "gw", &["+15550001"], "")
        + &http_provider("gw", &gw.url());
    let relay = Relay::start(dir.path(), &config);
    let good = am_payload("ops", "Bad", "firing", &[("Bad", "critical", "h")]);
    let check = |resp: (u16, String), status: u16, needle: &str| {
        assert_eq!(resp.0, status, "{}", resp.1);
        let v: serde_json::Value = serde_json::from_str(&resp.1).expect("a JSON error body");
        let e = v["error"].as_str().expect("an error field");
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
        assert!(!resp.1.contains(TOKEN), "the secret is never echoed");
    };
    check(
        relay.post_auth("/webhook/ops", "{not json"),
        400,
        "not valid JSON",
    );
    check(
        relay.post_auth(
            "/webhook/ops",
            &good.replace("\"version\":\"4\"", "\"version\":\"3\""),
        ),
        400,
        "unsupported payload version",
    );
    check(
        relay.post_auth(
            "/webhook/ops",
            r#"{"version":"4","status":"firing","receiver":"ops","alerts":[]}"#,
        ),
        400,
        "groupKey",
    );
    check(
        relay.post_auth("/webhook", &good.replace("\"ops\"", "\"nobody\"")),
        404,
        "nobody",
    );
    let big = format!("{{\"version\":\"4\",\"pad\":\"{}\"}}", "x".repeat(8192));
    check(relay.post_auth("/webhook/ops", &big), 413, "larger than");
    check(relay.post("/webhook/ops", &[], &good), 401, "unauthorized");
    check(
        relay.post("/webhook/ops", &[("Authorization", "Bearer wrong")], &good),
        401,
        "unauthorized",
    );
    use base64_encode as b64;
    let bad_basic = format!("Basic {}", b64("alertmanager:wrong"));
    check(
        relay.post("/webhook/basic", &[("Authorization", &bad_basic)], &good),
        401,
        "unauthorized",
    );
    let unknown_user = format!("Basic {}", b64("mallory:am-password"));
    check(
        relay.post("/webhook/basic", &[("Authorization", &unknown_user)], &good),
        401,
        "unauthorized",
    );
    check(
        relay.post(
            "/webhook/grafana",
            &[
                ("X-Grafana-Alerting-Signature", "00ff"),
                ("X-Grafana-Alerting-Signature-Timestamp", "1700000000"),
            ],
            &good,
        ),
        401,
        "unauthorized",
    );
    assert_eq!(relay.metric("vitals_relay_outbox_pending", &[]), 0.0);
    assert_eq!(
        relay.metric(
            "vitals_relay_requests_total",
            &["receiver=\"ops\"", "code=\"401\""]
        ),
        2.0
    );
    assert!(gw.requests().is_empty(), "nothing refused was delivered");

    // The same credentials done right are accepted.
    let ok_basic = format!("Basic {}", b64("alertmanager:am-password"));
    assert!(count_ok(&relay.post(
        "/webhook/basic",
        &[("Authorization", &ok_basic)],
        &good
    )));
    let grafana = r#"{"version":"1","orgId":1,"state":"alerting","title":"[FIRING:1] Graf","message":"m",
      "groupKey":"g","status":"firing","receiver":"x","alerts":[{"status":"firing",
      "labels":{"alertname":"Graf"},"annotations":{},"startsAt":"2026-01-01T00:00:00Z","values":{"A":1}}]}"#;
    let ts = "1700000000";
    let sig = hmac_sha256_hex(TOKEN.as_bytes(), format!("{ts}:{grafana}").as_bytes());
    assert!(count_ok(&relay.post(
        "/webhook/grafana",
        &[
            ("X-Grafana-Alerting-Signature", &sig),
            ("X-Grafana-Alerting-Signature-Timestamp", ts)
        ],
        grafana
    )));
    let reqs = wait_for(LONG, "both accepted notifications delivered", || {
        let r = gw.requests();
        (r.len() == 2).then_some(r)
    });
    // The Grafana notification was read as such, not just accepted.
    assert!(
        reqs.iter().any(|r| r.body.contains("Graf")),
        "{:?}",
        reqs.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
}

#[test]
fn reload_rejects_a_bad_config_and_keeps_the_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(Duration::ZERO, "{}");
    let good = relay_head(dir.path())
        + &bearer_receiver("ops", &["sms"])
        + &sms_channel("sms", "gw", &["+15550001"], "")
        + &http_provider("gw", &gw.url());
    let relay = Relay::start(dir.path(), &good);
    std::fs::write(
        &relay.config,
        good.replace("channels = [\"sms\"]", "channels = [\"nope\"]"),
    )
    .unwrap();
    relay.signal("-HUP");
    wait_for(LONG, "the rejected SIGHUP reload", || {
        (relay.metric("vitals_relay_config_reloads_total", &["result=\"failure\""]) == 1.0)
            .then_some(())
    });
    assert_eq!(
        relay.metric("vitals_relay_config_last_reload_successful", &[]),
        0.0
    );
    let (status, body) = relay.post("/-/reload", &[], "");
    assert_eq!(status, 400);
    assert!(body.contains("no channel is named \\\"nope\\\""), "{body}");
    // The old configuration still works.
    let p = am_payload("ops", "Reload", "firing", &[("Reload", "critical", "h")]);
    assert!(count_ok(&relay.post_auth("/webhook/ops", &p)));
    // A good change is applied.
    std::fs::write(
        &relay.config,
        good.clone() + &bearer_receiver("second", &["sms"]),
    )
    .unwrap();
    let (status, body) = relay.post("/-/reload", &[], "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        relay.metric("vitals_relay_config_last_reload_successful", &[]),
        1.0
    );
    assert!(count_ok(
        &relay.post_auth("/webhook/second", &p.replace("Reload", "Second"))
    ));
    wait_for(LONG, "both delivered", || {
        (gw.requests().len() == 2).then_some(())
    });
}

#[test]
fn shipped_relay_examples_and_alertmanager_config_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Their secrets live where the relay runs: checked without them.
    for f in ["examples/relay.toml", "examples/relay-sms.toml"] {
        let out = Command::new(crate::common::vitals_bin())
            .args(["check", "--skip-secrets", "--config"])
            .arg(root.join(f))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("relay.receivers[0].auth.token (env:RELAY_TOKEN)"),
            "{f}: {stdout}"
        );
    }
    // A typo is rejected with the key and the file named.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(root.join("examples/relay.toml"))
            .unwrap()
            .replace("dedup_window", "dedup_windw"),
    )
    .unwrap();
    let out = Command::new(crate::common::vitals_bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("bad.toml") && err.contains("dedup_windw"),
        "{err}"
    );
    let amtool = require("amtool");
    let out = Command::new(amtool)
        .args(["check-config"])
        .arg(root.join("alerting/alertmanager/alertmanager.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn web_config_file_serves_webhooks_over_tls_with_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let gw = Gateway::start(Duration::ZERO, "{}");
    const PW: &str = "am-over-tls";
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: leaf.pem\n  key_file: leaf.key\n  min_version: TLS12\nhttp_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\nbasic_auth_users:\n  alertmanager: {}\n",
            bcrypt_hash(PW)
        ),
    )
    .unwrap();
    // The listener does the authentication, so the receiver needs none.
    let config = relay_head(dir.path())
        + "\n[[relay.receivers]]\nname = \"ops\"\nauth = { type = \"none\" }\nchannels = [\"sms\"]\n"
        + &sms_channel("sms", "gw", &["+15550001"], "")
        + &http_provider("gw", &gw.url());
    let client = TlsClient {
        ca: certs.ca.clone(),
        user: "alertmanager".into(),
        password: PW.into(),
    };
    let relay = Relay::start_with(
        dir.path(),
        &config,
        &["--web.config.file", web.to_str().unwrap()],
        Some(client),
        None,
    );
    let t = relay.tls.as_ref().unwrap();
    let body = am_payload("ops", "Tls", "firing", &[("Tls", "critical", "h")]);
    let post = |creds: Option<&str>| {
        let mut args = vec!["-H", "Content-Type: application/json", "-d", &body];
        if let Some(c) = creds {
            args.extend(["-u", c]);
        }
        args.push("/webhook/ops");
        relay.curl(t, &args)
    };
    let (code, text) = post(None);
    assert_eq!(code, 401, "{text}");
    let (code, text) = post(Some("alertmanager:wrong"));
    assert_eq!(code, 401, "{text}");
    let (code, text) = post(Some(&format!("mallory:{PW}")));
    assert_eq!(code, 401, "{text}");
    let (code, text) = post(Some(&format!("alertmanager:{PW}")));
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"accepted\""), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{text}"
    );
    let (code, text) = relay.curl(t, &["-u", &format!("alertmanager:{PW}"), "/metrics"]);
    assert_eq!(code, 200);
    assert!(text.contains("vitals_relay_requests_total"));
    // Plain HTTP to the TLS port gets a clear 400.
    let (status, answer) = get(relay.addr, "/healthz").expect("an answer to plain HTTP");
    assert_eq!(status, 400);
    assert!(
        answer.contains("HTTP request to an HTTPS server"),
        "{answer}"
    );
    wait_for(LONG, "the one authenticated notification delivered", || {
        (gw.requests().len() == 1).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(gw.requests().len(), 1, "refused requests delivered nothing");

    // A bad web configuration stops the relay at start with the key named.
    let bad = dir.path().join("bad-web.yml");
    std::fs::write(&bad, "basic_auth_users:\n  am: plain-text\n").unwrap();
    let out = Command::new(crate::common::vitals_bin())
        .args(["relay", "--config"])
        .arg(&relay.config)
        .arg("--web.config.file")
        .arg(&bad)
        .arg("--web.listen-address")
        .arg(format!("127.0.0.1:{}", free_port()))
        .env("RELAY_TEST_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad-web.yml") && err.contains("basic_auth_users.am"),
        "{err}"
    );
}

/// `vitals check` reads a relay configuration's secrets as `vitals relay`
/// does and fails with the same message; `--skip-secrets` (for a machine
/// without them) passes and lists what it did not read.
#[test]
fn check_reads_relay_secrets_as_the_relay_does() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("gateway-token");
    let config = relay_head(dir.path())
        + "\n[[relay.receivers]]\nname = \"ops\"\nauth = { type = \"bearer\", token = \"env:VITALS_TEST_UNSET_TOKEN\" }\nchannels = [\"sms\"]\n"
        + &sms_channel("sms", "gw", &["+15550001"], "")
        + &http_provider("gw", "http://127.0.0.1:9")
        + &format!("bearer_token = \"file:{}\"\n", token_file.display());
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, &config).unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(crate::common::vitals_bin())
            .args(args)
            .arg("--config")
            .arg(&path)
            .args(if args[0] == "relay" {
                vec![
                    "--web.listen-address".to_string(),
                    format!("127.0.0.1:{}", free_port()),
                ]
            } else {
                vec![]
            })
            .env_remove("VITALS_TEST_UNSET_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The token file is missing: both refuse, with the same line.
    let (code, _, check_err) = run(&["check"], &[("VITALS_TEST_UNSET_TOKEN", "t")]);
    let (relay_code, _, relay_err) = run(&["relay"], &[("VITALS_TEST_UNSET_TOKEN", "t")]);
    assert_eq!((code, relay_code), (Some(2), Some(2)), "{check_err}");
    assert!(
        check_err.contains("relay.sms_providers[0]") && check_err.contains("gateway-token"),
        "{check_err}"
    );
    assert_eq!(check_err.trim(), relay_err.trim());
    // The environment variable is unset: both refuse, naming key and variable.
    std::fs::write(&token_file, "gateway-secret\n").unwrap();
    let (code, _, check_err) = run(&["check"], &[]);
    let (relay_code, _, relay_err) = run(&["relay"], &[]);
    assert_eq!((code, relay_code), (Some(2), Some(2)), "{check_err}");
    assert!(
        check_err.contains("relay.receivers[0].auth.token")
            && check_err.contains("environment variable VITALS_TEST_UNSET_TOKEN is not set"),
        "{check_err}"
    );
    assert_eq!(check_err.trim(), relay_err.trim());
    // Everything there: check passes.
    let (code, out, err) = run(&["check"], &[("VITALS_TEST_UNSET_TOKEN", "t")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(": OK") && !out.contains("not read"), "{out}");
    // --skip-secrets: passes without them and says what it did not read.
    std::fs::remove_file(&token_file).unwrap();
    let (code, out, err) = run(&["check", "--skip-secrets"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("not read (--skip-secrets)")
            && out.contains("relay.receivers[0].auth.token (env:VITALS_TEST_UNSET_TOKEN)")
            && out.contains(&format!(
                "relay.sms_providers[0].bearer_token (file:{})",
                token_file.display()
            )),
        "{out}"
    );
}

// ------------------------------------------------------- small test utils

/// A bcrypt hash (low cost, for speed) made with the relay's own bcrypt crate.
fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn hmac_sha256_hex(key: &[u8], msg: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(msg);
    hex::encode(mac.finalize().into_bytes())
}

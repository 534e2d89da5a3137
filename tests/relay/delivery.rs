//! `vitals relay` delivering against real peers: an aiosmtpd SMTP server
//! (STARTTLS or implicit TLS with AUTH, certificate signed by a test CA),
//! a local HTTP server standing in for SMS gateways with scripted answers,
//! and a real Alertmanager posting webhooks. Harness: `tests/common/`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::alertmanager::Alertmanager;
use crate::common::certs::make_certs;
use crate::common::relay::*;
use crate::common::smtp::{Smtp, read_log};
use crate::common::{free_port, promtool_check_metrics, require, wait_for};

#[test]
fn delivers_threaded_multipart_mail_over_starttls_and_implicit_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let (p1, p2) = (free_port(), free_port());
    let starttls = Smtp::start(p1, &dir.path().join("mail1"), "starttls", &certs);
    let implicit = Smtp::start(p2, &dir.path().join("mail2"), "implicit", &certs);
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["mail-starttls", "mail-implicit"])
        + &email_channel("mail-starttls", p1, "starttls", "plain", &certs)
        + &email_channel("mail-implicit", p2, "implicit", "login", &certs);
    let relay = Relay::start(dir.path(), &config);

    let firing = am_payload(
        "ops",
        "DiskFull",
        "firing",
        &[
            ("DiskFull", "critical", "host-a"),
            ("DiskFull", "critical", "host-b"),
        ],
    );
    assert!(count_ok(&relay.post_auth("/webhook", &firing)));
    // Alertmanager HA: the same group from the peer is not delivered again.
    let dup = relay.post_auth("/webhook/ops", &firing);
    assert_eq!(dup.0, 200);
    assert!(dup.1.contains("duplicate"), "{}", dup.1);
    let resolved = am_payload(
        "ops",
        "DiskFull",
        "resolved",
        &[
            ("DiskFull", "critical", "host-a"),
            ("DiskFull", "critical", "host-b"),
        ],
    );
    assert!(count_ok(&relay.post_auth("/webhook/ops", &resolved)));

    for smtp in [&starttls, &implicit] {
        let mails = wait_for(LONG, "two mails", || {
            let m = smtp.mails();
            (m.len() >= 2).then_some(m)
        });
        let first = mails
            .iter()
            .find(|m| m["subject"].as_str().unwrap().starts_with("[FIRING"))
            .expect("a firing mail");
        let second = mails
            .iter()
            .find(|m| m["subject"].as_str().unwrap().starts_with("[RESOLVED"))
            .expect("a resolved mail");
        assert_eq!(first["subject"], "[FIRING:2] DiskFull");
        assert_eq!(second["subject"], "[RESOLVED] DiskFull");
        let rcpts: BTreeSet<&str> = first["rcpt_tos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            rcpts,
            BTreeSet::from(["oncall@example.com", "ops@example.com"])
        );
        assert!(first["to"].as_str().unwrap().contains("Ops Team"));
        assert_eq!(first["content_type"], "multipart/alternative");
        let text = first["text"].as_str().unwrap();
        assert!(
            text.contains("[FIRING] DiskFull since 2026-01-01T00:00:00Z"),
            "{text}"
        );
        assert!(text.contains("Summary: DiskFull on host-b"));
        assert!(text.contains("Source: http://prometheus:9090/graph?g0.expr=DiskFull"));
        let html = first["html"].as_str().unwrap();
        assert!(html.contains("<b>[FIRING] DiskFull</b>"), "{html}");
        assert!(html.contains("Details &lt;here&gt;."));
        assert!(second["text"].as_str().unwrap().starts_with("RESOLVED"));
        // Threading: distinct Message-IDs, one shared thread root.
        assert_ne!(first["message_id"], second["message_id"]);
        assert!(
            first["message_id"]
                .as_str()
                .unwrap()
                .ends_with("@relay.test>")
        );
        assert_eq!(first["in_reply_to"], second["in_reply_to"]);
        assert_eq!(first["references"], second["references"]);
        assert_eq!(first["references"], first["in_reply_to"]);
        assert!(first["references"].as_str().unwrap().starts_with('<'));
        // Exactly two: the duplicate was not delivered.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(smtp.mails().len(), 2);
    }
    assert_eq!(
        relay.metric(
            "vitals_relay_notifications_deduplicated_total",
            &["receiver=\"ops\""]
        ),
        1.0
    );
    wait_for(LONG, "delivered counters", || {
        (relay.metric(
            "vitals_relay_notifications_delivered_total",
            &["channel=\"mail-implicit\""],
        ) == 2.0)
            .then_some(())
    });
    let (ok, findings) = promtool_check_metrics(&relay.metrics());
    assert!(ok, "promtool check metrics: {findings}");
}

#[test]
fn sms_gateway_retries_honours_retry_after_and_records_permanent_failures() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(Duration::ZERO, "{}");
    gw.push(500, &[], "{\"error\":\"oops\"}");
    gw.push(429, &[("Retry-After", "1")], "{}");
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["sms"])
        + &sms_channel("sms", "gw", &["+15550001"], "")
        + &http_provider("gw", &gw.url());
    let relay = Relay::start(dir.path(), &config);
    let body = am_payload("ops", "High", "firing", &[("HighLoad", "critical", "db-1")]);
    assert!(count_ok(&relay.post_auth("/webhook", &body)));
    wait_for(LONG, "delivery after 500 and 429", || {
        (relay.metric(
            "vitals_relay_notifications_delivered_total",
            &["channel=\"sms\""],
        ) == 1.0)
            .then_some(())
    });
    let reqs = gw.requests();
    assert_eq!(reqs.len(), 3, "500, 429, then 200");
    assert_eq!(reqs[2].method, "POST");
    assert_eq!(reqs[2].path, "/send");
    assert_eq!(reqs[2].header("X-Test"), Some("yes"));
    let sent: serde_json::Value = serde_json::from_str(&reqs[2].body).unwrap();
    assert_eq!(sent["to"], "+15550001");
    assert_eq!(sent["text"], "FIRING:1 HighLoad db-1: HighLoad on db-1");
    assert_eq!(sent["id"], reqs[0].header("Idempotency-Key").unwrap());
    assert_eq!(
        relay.metric(
            "vitals_relay_delivery_retries_total",
            &["reason=\"http_429\""]
        ),
        1.0
    );
    assert_eq!(
        relay.metric(
            "vitals_relay_delivery_retries_total",
            &["reason=\"http_5xx\""]
        ),
        1.0
    );

    // A 400 is permanent: recorded and counted, never retried.
    gw.push(400, &[], "{\"error\":\"bad number\"}");
    let body = am_payload("ops", "Other", "firing", &[("Other", "critical", "db-2")]);
    assert!(count_ok(&relay.post_auth("/webhook", &body)));
    wait_for(LONG, "the permanent failure to be counted", || {
        (relay.metric(
            "vitals_relay_notifications_failed_total",
            &["channel=\"sms\"", "reason=\"http_4xx\""],
        ) == 1.0)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(gw.requests().len(), 4, "a 400 is not retried");
    assert_eq!(relay.metric("vitals_relay_outbox_pending", &[]), 0.0);
}

#[test]
fn twilio_and_vonage_requests_and_vonage_status_codes() {
    let dir = tempfile::tempdir().unwrap();
    let twilio = Gateway::start(Duration::ZERO, "{\"sid\":\"SM1\",\"status\":\"queued\"}");
    let vonage = Gateway::start(
        Duration::ZERO,
        "{\"message-count\":\"1\",\"messages\":[{\"status\":\"0\"}]}",
    );
    // Vonage answers 200 with "throttled" first: retried.
    vonage.push(
        200,
        &[],
        "{\"message-count\":\"1\",\"messages\":[{\"status\":\"1\",\"error-text\":\"Throttled\"}]}",
    );
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["tw", "vo"])
        + &sms_channel("tw", "twilio-a", &["+15550001", "+15550002"], "")
        + &sms_channel("vo", "vonage-a", &["+15550003"], "")
        + &format!(
            r#"
[[relay.sms_providers]]
name = "twilio-a"
type = "twilio"
account_sid = "AC123"
auth_token = "env:RELAY_TEST_TOKEN"
from = "+15550000"
base_url = "{}"

[[relay.sms_providers]]
name = "vonage-a"
type = "vonage"
api_key = "key1"
api_secret = "env:RELAY_TEST_TOKEN"
from = "vitals"
base_url = "{}"
"#,
            twilio.url(),
            vonage.url()
        );
    let relay = Relay::start(dir.path(), &config);
    let body = am_payload(
        "ops",
        "Temp",
        "firing",
        &[("TempHigh", "critical", "plant-ü")],
    );
    assert!(count_ok(&relay.post_auth("/webhook", &body)));
    wait_for(LONG, "all three SMS", || {
        (twilio.requests().len() == 2 && vonage.requests().len() == 2).then_some(())
    });
    let t = twilio.requests();
    assert_eq!(t[0].path, "/2010-04-01/Accounts/AC123/Messages.json");
    assert!(t[0].header("Authorization").unwrap().starts_with("Basic "));
    let tos: BTreeSet<bool> = t.iter().map(|r| r.body.contains("To=%2B1555000")).collect();
    assert_eq!(tos, BTreeSet::from([true]));
    assert!(t[0].body.contains("From=%2B15550000"));
    assert!(t[0].body.contains("Body=FIRING%3A1+TempHigh"));
    let v = vonage.requests();
    assert_eq!(v[1].path, "/sms/json");
    assert!(v[1].body.contains("api_key=key1"));
    assert!(v[1].body.contains("to=15550003"));
    wait_for(LONG, "vonage delivered", || {
        (relay.metric(
            "vitals_relay_notifications_delivered_total",
            &["channel=\"vo\""],
        ) == 1.0)
            .then_some(())
    });
    assert_eq!(
        relay.metric(
            "vitals_relay_delivery_retries_total",
            &["reason=\"provider_status\""]
        ),
        1.0
    );
}

#[test]
fn flood_control_folds_excess_into_a_counted_summary() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(Duration::ZERO, "{}");
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["sms"])
        + &sms_channel(
            "sms",
            "gw",
            &["+15550001"],
            "rate_limit = { max = 2, per = \"3s\" }",
        )
        + &http_provider("gw", &gw.url());
    let relay = Relay::start(dir.path(), &config);
    relay.fire_each("/webhook", "Flood", "critical", 5);
    let reqs = wait_for(LONG, "two messages and a summary", || {
        let r = gw.requests();
        (r.len() >= 3).then_some(r)
    });
    let summary: serde_json::Value = serde_json::from_str(&reqs[2].body).unwrap();
    let text = summary["text"].as_str().unwrap();
    assert!(text.starts_with("3 notification(s)"), "{text}");
    assert_eq!(
        relay.metric(
            "vitals_relay_notifications_folded_total",
            &["channel=\"sms\""]
        ),
        3.0
    );
    assert_eq!(
        relay.metric("vitals_relay_summaries_sent_total", &["channel=\"sms\""]),
        1.0
    );
    relay.wait_outbox_empty();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(gw.requests().len(), 3);
}

#[test]
fn real_alertmanager_routes_critical_to_mail_and_sms_and_warning_to_mail() {
    let amtool = require("amtool");
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let smtp_port = free_port();
    let smtp = Smtp::start(smtp_port, &dir.path().join("mail"), "starttls", &certs);
    let gw = Gateway::start(Duration::ZERO, "{}");
    let config = relay_head(dir.path())
        + &bearer_receiver("critical", &["mail", "sms"])
        + &bearer_receiver("warning", &["mail"])
        + &email_channel("mail", smtp_port, "starttls", "plain", &certs)
        + &sms_channel(
            "sms",
            "gw",
            &["+15550001"],
            "matchers = ['severity=\"critical\"']",
        )
        + &http_provider("gw", &gw.url());
    let relay = Relay::start(dir.path(), &config);

    // The shipped Alertmanager config, pointed at this relay.
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("alerting/alertmanager/alertmanager.yml"),
    )
    .unwrap();
    let token_file = dir.path().join("relay-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let am_config = shipped
        .replace(
            "http://vitals-relay:9798",
            &format!("http://{}", relay.addr),
        )
        .replace(
            "/etc/alertmanager/relay-token",
            token_file.to_str().unwrap(),
        )
        .replace("group_wait: 30s", "group_wait: 1s")
        .replace("group_interval: 5m", "group_interval: 2s");
    let am = Alertmanager::start(&am_config);
    let am_addr = am.addr;
    let add = |labels: &[&str]| {
        let out = Command::new(&amtool)
            .args(["alert", "add"])
            .args(labels)
            .arg("--annotation=summary=Injected by the test")
            .arg(format!("--alertmanager.url=http://{am_addr}"))
            .output()
            .expect("amtool");
        assert!(
            out.status.success(),
            "amtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    add(&[
        "alertname=PumpFailure",
        "severity=critical",
        "instance=pump-1",
    ]);
    add(&["alertname=TankLow", "severity=warning", "instance=tank-2"]);

    let mails = wait_for(
        Duration::from_secs(90),
        "both mails from Alertmanager",
        || {
            let m = smtp.mails();
            (m.len() >= 2).then_some(m)
        },
    );
    let subjects: BTreeSet<String> = mails
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_string())
        .collect();
    assert!(
        subjects.contains("[FIRING:1] PumpFailure instance=pump-1"),
        "{subjects:?}"
    );
    assert!(
        subjects.contains("[FIRING:1] TankLow instance=tank-2"),
        "{subjects:?}"
    );
    let sms = wait_for(LONG, "the critical SMS", || {
        let r = gw.requests();
        (!r.is_empty()).then_some(r)
    });
    assert!(sms[0].body.contains("PumpFailure"), "{}", sms[0].body);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        gw.requests().iter().all(|r| !r.body.contains("TankLow")),
        "warnings do not go to SMS"
    );
}

#[test]
fn smtp_550_is_recorded_as_failed_not_retried_and_other_mail_keeps_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let port = free_port();
    let mail_dir = dir.path().join("mail");
    let smtp = Smtp::starttls_env(
        port,
        &mail_dir,
        &certs,
        &[("SMTP_REJECT_RCPT", "gone@example.com")],
    );
    let gone = email_channel("mail-gone", port, "starttls", "plain", &certs).replace(
        r#"to = ["oncall@example.com", "Ops Team <ops@example.com>"]"#,
        r#"to = ["gone@example.com"]"#,
    );
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["mail-gone", "mail"])
        + &gone
        + &email_channel("mail", port, "starttls", "plain", &certs);
    let mut relay = Relay::start(dir.path(), &config);
    relay.fire_each("/webhook", "Gone", "critical", 2);
    wait_for(LONG, "both permanent failures counted", || {
        (relay.metric(
            "vitals_relay_notifications_failed_total",
            &["channel=\"mail-gone\"", "reason=\"smtp_5xx\""],
        ) == 2.0)
            .then_some(())
    });
    // The refused channel's next notification was still tried, and the
    // other channel delivered both.
    wait_for(LONG, "both mails on the working channel", || {
        (smtp.mails().len() >= 2).then_some(())
    });
    // More arrive after the failures and still flow.
    let body = am_payload("ops", "Gone2", "firing", &[("Gone", "critical", "h")]);
    assert!(count_ok(&relay.post_auth("/webhook", &body)));
    wait_for(LONG, "the third mail and failure", || {
        (smtp.mails().len() >= 3
            && relay.metric(
                "vitals_relay_notifications_failed_total",
                &["channel=\"mail-gone\""],
            ) == 3.0)
            .then_some(())
    });
    // Not retried: retries back off from 100 ms, so two seconds would show them.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        read_log(&mail_dir, "rejects.jsonl").len(),
        3,
        "one RCPT each"
    );
    assert_eq!(
        relay.metric(
            "vitals_relay_delivery_retries_total",
            &["channel=\"mail-gone\""]
        ),
        0.0
    );
    assert_eq!(relay.metric("vitals_relay_outbox_pending", &[]), 0.0);
    let subjects: BTreeSet<String> = smtp
        .mails()
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(subjects.len(), 3, "{subjects:?}");
    assert!(
        smtp.mails()
            .iter()
            .all(|m| !m["rcpt_tos"].to_string().contains("gone@")),
        "the refused recipient got nothing"
    );

    // The failures are recorded in the outbox file with reason and detail.
    relay.kill9();
    let db = redb::Database::open(dir.path().join("data/outbox.redb")).expect("open the outbox");
    let read = redb::ReadableDatabase::begin_read(&db).unwrap();
    let failed = read
        .open_table(redb::TableDefinition::<u64, &[u8]>::new("failed"))
        .unwrap();
    let records: Vec<serde_json::Value> = redb::ReadableTable::iter(&failed)
        .unwrap()
        .map(|row| serde_json::from_slice(row.unwrap().1.value()).unwrap())
        .collect();
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r["reason"], "smtp_5xx");
        assert_eq!(r["job"]["channel"], "mail-gone");
        assert!(r["detail"].as_str().unwrap().contains("550"), "{r}");
    }
}

#[test]
fn xoauth2_login_with_a_token_file_and_a_refused_token_retried_until_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let port = free_port();
    let mail_dir = dir.path().join("mail");
    const FRESH: &str = "ya29.fresh-access-token";
    const EXPIRED: &str = "ya29.expired-access-token";
    let smtp = Smtp::start_with(port, &mail_dir, "starttls", &certs, FRESH, &[]);
    let token_file = dir.path().join("smtp-token");
    std::fs::write(&token_file, format!("{EXPIRED}\n")).unwrap();
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["mail"])
        + &email_channel("mail", port, "starttls", "xoauth2", &certs).replace(
            "password = \"env:RELAY_SMTP_PASSWORD\"",
            &format!("password = \"file:{}\"", token_file.display()),
        );
    let log = dir.path().join("relay.log");
    let relay = Relay::start_with(
        dir.path(),
        &config,
        &["--log.level", "debug"],
        None,
        Some(log.clone()),
    );
    let body = am_payload("ops", "OAuth", "firing", &[("OAuth", "warning", "h")]);
    assert!(count_ok(&relay.post_auth("/webhook", &body)));
    // The server refuses the expired token (535): retried, not dropped.
    wait_for(LONG, "refused logins retried", || {
        (relay.metric(
            "vitals_relay_delivery_retries_total",
            &["channel=\"mail\"", "reason=\"smtp_auth\""],
        ) >= 2.0)
            .then_some(())
    });
    assert_eq!(relay.metric("vitals_relay_outbox_pending", &[]), 1.0);
    assert!(smtp.mails().is_empty());
    // The token is refreshed in its file; a reload picks it up.
    std::fs::write(&token_file, format!("{FRESH}\n")).unwrap();
    let (status, resp) = relay.post("/-/reload", &[], "");
    assert_eq!(status, 200, "{resp}");
    let mails = wait_for(LONG, "the mail after the reload", || {
        let m = smtp.mails();
        (!m.is_empty()).then_some(m)
    });
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["subject"], "[FIRING:1] OAuth");
    let auths = read_log(&mail_dir, "auths.jsonl");
    assert!(
        auths.iter().all(|a| a["mechanism"] == "XOAUTH2"),
        "only XOAUTH2 was used: {auths:?}"
    );
    assert_eq!(auths.last().unwrap()["ok"], true);
    assert!(auths.iter().any(|a| a["ok"] == false));
    assert_eq!(
        relay.metric(
            "vitals_relay_notifications_failed_total",
            &["channel=\"mail\""]
        ),
        0.0
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Delivery failed; will retry."), "{text}");
    for secret in [FRESH, EXPIRED, TOKEN] {
        assert!(!text.contains(secret), "a token reached the log");
    }
}

/// An alert name and label values ten times longer than an SMTP line may
/// be (RFC 5322: 998 characters). The catcher refuses a longer line with
/// `500 Line too long` as real servers do, so the mail arrives only if every
/// header is folded or encoded and every body line encoded.
#[test]
fn a_10000_character_alert_name_and_label_values_arrive_intact() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let port = free_port();
    let mail_dir = dir.path().join("mail");
    let smtp = Smtp::start(port, &mail_dir, "starttls", &certs);
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["mail"])
        + &email_channel("mail", port, "starttls", "plain", &certs);
    let relay = Relay::start(dir.path(), &config);
    // No spaces anywhere, so nothing can be folded at a space.
    let name: String = (0..10_000u32)
        .map(|i| char::from(b'A' + (i % 26) as u8))
        .collect();
    let cluster: String = (0..10_000u32)
        .map(|i| char::from(b'0' + (i % 10) as u8))
        .collect();
    let unicode = "ünïcødé✓".repeat(1250);
    let description = "x".repeat(10_000);
    let body = serde_json::json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{name}\"}}"),
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "ops",
        "groupLabels": {"alertname": name, "cluster": cluster},
        "commonLabels": {"alertname": name},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": name, "cluster": cluster, "detail": unicode},
            "annotations": {"summary": unicode, "description": description},
            "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": format!("http://prometheus:9090/graph?g0.expr={name}"),
            "fingerprint": "00000000000000aa",
        }],
    })
    .to_string();
    assert!(count_ok(&relay.post_auth("/webhook", &body)));
    let mail = wait_for(LONG, "the mail, or its failure", || {
        if let Some(m) = smtp.mails().into_iter().next() {
            return Some(m);
        }
        let failed = metric_sum(
            &relay.metrics(),
            "vitals_relay_notifications_failed_total",
            &["channel=\"mail\""],
        );
        assert!(
            failed == 0.0,
            "the long alert was recorded as failed (the server refused a line)"
        );
        None
    });
    assert_eq!(
        mail["subject"].as_str().unwrap(),
        format!("[FIRING:1] {name} cluster={cluster}")
    );
    let text = mail["text"].as_str().unwrap();
    for needle in [&name, &cluster, &unicode, &description] {
        assert!(text.contains(needle.as_str()), "text body lacks a value");
    }
    assert!(text.contains(&format!("[FIRING] {name} since")));
    let html = mail["html"].as_str().unwrap();
    assert!(html.contains(&format!("<b>[FIRING] {name}</b>")));
    assert!(html.contains(&unicode));
    // What went over the wire: no line above 998 characters.
    let mut files = 0;
    for entry in std::fs::read_dir(mail_dir.join("new")).unwrap() {
        let raw = std::fs::read(entry.unwrap().path()).unwrap();
        files += 1;
        let longest = raw
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
            .max()
            .unwrap_or(0);
        assert!(longest <= 998, "a line of {longest} characters");
    }
    assert_eq!(files, 1);
}

/// Links in the HTML mail are made only of http/https URLs; a
/// `javascript:` (or any other) generator URL is shown as escaped text.
#[test]
fn html_mail_links_only_http_and_https_urls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let port = free_port();
    let smtp = Smtp::start(port, &dir.path().join("mail"), "starttls", &certs);
    let config = relay_head(dir.path())
        + &bearer_receiver("ops", &["mail"])
        + &email_channel("mail", port, "starttls", "plain", &certs);
    let relay = Relay::start(dir.path(), &config);
    let body = am_payload("ops", "Xss", "firing", &[("Xss", "critical", "h")])
        .replace(
            "http://prometheus:9090/graph?g0.expr=Xss",
            "javascript:alert(document.cookie)",
        )
        .replace("http://alertmanager:9093", " JAVASCRIPT:alert(2)");
    assert!(body.contains("javascript:alert(document.cookie)"));
    assert!(count_ok(&relay.post_auth("/webhook", &body)));
    let mail = wait_for(LONG, "the mail", || smtp.mails().into_iter().next());
    let html = mail["html"].as_str().unwrap();
    let lower = html.to_lowercase();
    assert!(!lower.contains("href=\"javascript"), "{html}");
    assert!(!lower.contains("href=\" javascript"), "{html}");
    assert!(
        html.contains("Source: javascript:alert(document.cookie)"),
        "{html}"
    );
    // An http(s) URL still becomes a link.
    let body = am_payload("ops", "Fine", "firing", &[("Fine", "critical", "h")]);
    assert!(count_ok(&relay.post_auth("/webhook", &body)));
    let mail = wait_for(LONG, "the second mail", || smtp.mails().get(1).cloned());
    let html = mail["html"].as_str().unwrap();
    assert!(
        html.contains(
            "<a href=\"http:&#x2f;&#x2f;prometheus:9090&#x2f;graph?g0.expr=Fine\">Source</a>"
        ),
        "{html}"
    );
}

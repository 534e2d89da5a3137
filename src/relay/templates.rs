//! Message texts: e-mail subject, text and HTML bodies from minijinja
//! templates (built-in defaults, overridable per channel) and length-aware
//! SMS text.

use minijinja::{AutoEscape, Environment, HtmlEscape, Value, context};

use super::payload::{Alert, Notification};

const SUBJECT: &str = r#"[{{ status|upper }}{% if status == "firing" %}:{{ firing|length }}{% endif %}] {{ group_labels.alertname or common_labels.alertname or title or "alerts" }}{% for k, v in group_labels|items if k != "alertname" %} {{ k }}={{ v }}{% endfor %}"#;

const TEXT: &str = r#"{% if status == "resolved" %}RESOLVED: all alerts of this group are resolved.{% else %}{{ firing|length }} alert(s) firing{% if resolved %}, {{ resolved|length }} resolved{% endif %}.{% endif %}
{% if message %}
{{ message }}
{% endif %}
{% for a in firing %}
[FIRING] {{ a.labels.alertname or "alert" }} since {{ a.starts_at }}
{% if a.annotations.summary %}  Summary: {{ a.annotations.summary }}
{% endif %}{% if a.annotations.description %}  Description: {{ a.annotations.description }}
{% endif %}{% if a.annotations.runbook_url %}  Runbook: {{ a.annotations.runbook_url }}
{% endif %}  Labels:{% for k, v in a.labels|items %} {{ k }}={{ v }}{% endfor %}
{% if a.generator_url %}  Source: {{ a.generator_url }}
{% endif %}{% if a.dashboard_url %}  Dashboard: {{ a.dashboard_url }}
{% endif %}{% if a.panel_url %}  Panel: {{ a.panel_url }}
{% endif %}{% if a.silence_url %}  Silence: {{ a.silence_url }}
{% endif %}{% endfor %}{% for a in resolved %}
[RESOLVED] {{ a.labels.alertname or "alert" }} from {{ a.starts_at }} to {{ a.ends_at }}
{% if a.annotations.summary %}  Summary: {{ a.annotations.summary }}
{% endif %}  Labels:{% for k, v in a.labels|items %} {{ k }}={{ v }}{% endfor %}
{% endfor %}{% if truncated_alerts %}
... and {{ truncated_alerts }} more alert(s) not included by Alertmanager.
{% endif %}{% if external_url %}
{% if origin == "grafana" %}Grafana{% else %}Alertmanager{% endif %}: {{ external_url }}{% if silence_url %}
Silence: {{ silence_url }}{% endif %}
{% endif %}"#;

const HTML: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>{{ subject }}</title></head>
<body style="font-family:sans-serif">
{% if status == "resolved" %}<h2 style="color:#2e7d32">RESOLVED</h2><p>All alerts of this group are resolved.</p>
{% else %}<h2 style="color:#c62828">{{ firing|length }} alert(s) firing{% if resolved %}, {{ resolved|length }} resolved{% endif %}</h2>{% endif %}
{% if message %}<pre>{{ message }}</pre>{% endif %}
{% for a in firing %}<div style="border-left:4px solid #c62828;padding-left:8px;margin:8px 0">
<b>[FIRING] {{ a.labels.alertname or "alert" }}</b> since {{ a.starts_at }}<br>
{% if a.annotations.summary %}<b>Summary:</b> {{ a.annotations.summary }}<br>{% endif %}
{% if a.annotations.description %}<b>Description:</b> {{ a.annotations.description }}<br>{% endif %}
{% if a.annotations.runbook_url %}<b>Runbook:</b> <a href="{{ a.annotations.runbook_url }}">{{ a.annotations.runbook_url }}</a><br>{% endif %}
<b>Labels:</b>{% for k, v in a.labels|items %} <code>{{ k }}={{ v }}</code>{% endfor %}<br>
{% if a.generator_url %}{{ a.generator_url|link("Source") }} {% endif %}{% if a.dashboard_url %}{{ a.dashboard_url|link("Dashboard") }} {% endif %}{% if a.panel_url %}{{ a.panel_url|link("Panel") }} {% endif %}{% if a.silence_url %}{{ a.silence_url|link("Silence") }}{% endif %}
</div>{% endfor %}
{% for a in resolved %}<div style="border-left:4px solid #2e7d32;padding-left:8px;margin:8px 0">
<b>[RESOLVED] {{ a.labels.alertname or "alert" }}</b> from {{ a.starts_at }} to {{ a.ends_at }}<br>
{% if a.annotations.summary %}<b>Summary:</b> {{ a.annotations.summary }}<br>{% endif %}
<b>Labels:</b>{% for k, v in a.labels|items %} <code>{{ k }}={{ v }}</code>{% endfor %}
</div>{% endfor %}
{% if truncated_alerts %}<p>... and {{ truncated_alerts }} more alert(s) not included by Alertmanager.</p>{% endif %}
{% if external_url %}<p>{{ external_url|link("Grafana" if origin == "grafana" else "Alertmanager") }}{% if silence_url %} &middot; {{ silence_url|link("Silence") }}{% endif %}</p>{% endif %}
</body></html>
"#;

#[derive(Debug, thiserror::Error)]
#[error("template {name}: {reason}")]
pub struct TemplateError {
    pub name: &'static str,
    pub reason: String,
}

/// Compiled templates of one channel.
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Compile the channel's templates; `None` picks the built-in one.
    pub fn new(
        subject: Option<&str>,
        text: Option<&str>,
        html: Option<&str>,
        sms: Option<&str>,
    ) -> Result<Templates, TemplateError> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
        env.set_keep_trailing_newline(true);
        env.add_filter("link", link);
        let items: [(&'static str, Option<&str>); 4] = [
            ("subject.txt", Some(subject.unwrap_or(SUBJECT))),
            ("body.txt", Some(text.unwrap_or(TEXT))),
            ("body.html", Some(html.unwrap_or(HTML))),
            ("sms.txt", sms),
        ];
        for (name, src) in items {
            if let Some(src) = src {
                env.add_template_owned(name, src.to_string())
                    .map_err(|e| TemplateError {
                        name,
                        reason: e.to_string(),
                    })?;
            }
        }
        Ok(Templates { env })
    }

    fn render(&self, name: &'static str, ctx: &Value) -> Result<String, TemplateError> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| TemplateError {
                name,
                reason: e.to_string(),
            })
    }

    /// Subject (one line), text body and HTML body of an e-mail.
    pub fn email(&self, n: &Notification) -> Result<(String, String, String), TemplateError> {
        let ctx = context(n);
        let subject = self
            .render("subject.txt", &ctx)?
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let ctx = context! { subject => subject.clone(), ..ctx };
        let text = self.render("body.txt", &ctx)?;
        let html = self.render("body.html", &ctx)?;
        Ok((subject, text, html))
    }

    /// The SMS text: the channel's template if it has one (cut to fit), or
    /// the built-in length-aware summary.
    pub fn sms(&self, n: &Notification, max_segments: usize) -> Result<String, TemplateError> {
        if self.env.get_template("sms.txt").is_ok() {
            let text = self.render("sms.txt", &context(n))?;
            return Ok(truncate_to_fit(text.trim(), max_segments));
        }
        Ok(sms_summary(n, max_segments))
    }
}

/// The template context: the notification plus `firing`/`resolved` lists
/// and the first silence link.
fn context(n: &Notification) -> Value {
    let firing: Vec<&Alert> = n.firing().collect();
    let resolved: Vec<&Alert> = n.resolved().collect();
    let silence_url = n
        .alerts
        .iter()
        .map(|a| a.silence_url.as_str())
        .find(|s| !s.is_empty())
        .unwrap_or("");
    context! {
        origin => n.origin,
        receiver => n.receiver,
        status => n.status,
        group_key => n.group_key,
        group_labels => n.group_labels,
        common_labels => n.common_labels,
        common_annotations => n.common_annotations,
        external_url => n.external_url,
        truncated_alerts => n.truncated_alerts,
        title => n.title,
        message => n.message,
        alerts => n.alerts,
        firing => firing,
        resolved => resolved,
        silence_url => silence_url,
    }
}

/// `{{ url|link("Source") }}` in an HTML template: a link for an `http` or
/// `https` URL; anything else (`javascript:`, `data:`, a relative path, not
/// a URL at all) is shown as escaped text after the label, never as a link.
/// The `href` is the parsed, normalised URL, so what was checked is what is
/// linked (browsers ignore leading spaces and embedded tabs in a scheme).
fn link(url: &str, label: &str) -> Value {
    let esc = |s: &str| HtmlEscape(s).to_string();
    match web_url(url) {
        Some(u) => Value::from_safe_string(format!("<a href=\"{}\">{}</a>", esc(&u), esc(label))),
        None => Value::from_safe_string(format!("{}: {}", esc(label), esc(url))),
    }
}

/// The normalised URL when `s` is an absolute `http`/`https` URL.
pub fn web_url(s: &str) -> Option<String> {
    let u = reqwest::Url::parse(s).ok()?;
    matches!(u.scheme(), "http" | "https").then(|| u.to_string())
}

/// GSM 03.38 basic character set.
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// Characters of the extension table (two septets each).
const GSM_EXT: &str = "^{}\\[~]|€\u{c}";

/// Length of `text` in its cheapest encoding: (is GSM-7, units) where a
/// unit is a septet (GSM-7) or a UTF-16 code unit (UCS-2).
pub fn sms_units(text: &str) -> (bool, usize) {
    let mut septets = 0;
    for c in text.chars() {
        if GSM_BASIC.contains(c) {
            septets += 1;
        } else if GSM_EXT.contains(c) {
            septets += 2;
        } else {
            return (false, text.encode_utf16().count());
        }
    }
    (true, septets)
}

/// Units available in `segments` SMS segments for an encoding.
pub fn sms_capacity(gsm: bool, segments: usize) -> usize {
    match (gsm, segments.max(1)) {
        (true, 1) => 160,
        (false, 1) => 70,
        (true, n) => 153 * n,
        (false, n) => 67 * n,
    }
}

pub fn fits(text: &str, segments: usize) -> bool {
    let (gsm, units) = sms_units(text);
    units <= sms_capacity(gsm, segments)
}

/// Cut `text` (at a character boundary) so it fits, marking the cut with "…".
pub fn truncate_to_fit(text: &str, segments: usize) -> String {
    if fits(text, segments) {
        return text.to_string();
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate: String = chars.iter().collect::<String>() + "…";
        if fits(&candidate, segments) {
            return candidate;
        }
    }
    String::new()
}

/// `FIRING:3 DiskFull host-a: Disk almost full; DiskFull host-b: …; +1 more`
/// — as many alerts as fit, then how many were left out.
pub fn sms_summary(n: &Notification, segments: usize) -> String {
    let firing: Vec<&Alert> = n.firing().collect();
    let (head, list): (String, Vec<&Alert>) = if n.status == "firing" {
        (format!("FIRING:{}", firing.len()), firing)
    } else {
        (
            format!("RESOLVED:{}", n.alerts.len()),
            n.alerts.iter().collect(),
        )
    };
    let lines: Vec<String> = list.iter().map(|a| alert_line(a)).collect();
    let extra = n.truncated_alerts as usize;
    let mut text = head.clone();
    for (i, line) in lines.iter().enumerate() {
        let sep = if i == 0 { " " } else { "; " };
        let left_after = lines.len() - i - 1 + extra;
        let candidate = format!("{text}{sep}{line}");
        let with_more = if left_after > 0 {
            format!("{candidate}; +{left_after} more")
        } else {
            candidate.clone()
        };
        if fits(&with_more, segments) {
            text = candidate;
            continue;
        }
        // This alert does not fit (with the "+N more" tail): stop here.
        let left = lines.len() - i + extra;
        let tail = format!("{text}{sep}+{left} more");
        if fits(&tail, segments) {
            return tail;
        }
        return truncate_to_fit(&tail, segments);
    }
    if extra > 0 {
        text = format!("{text}; +{extra} more");
    }
    truncate_to_fit(&text, segments)
}

fn alert_line(a: &Alert) -> String {
    let mut s = a.name().to_string();
    if let Some(i) = a.labels.get("instance") {
        s.push(' ');
        s.push_str(i);
    }
    if let Some(sum) = a.annotations.get("summary") {
        s.push_str(": ");
        s.push_str(sum);
    }
    s
}

/// The text of a flood-control summary for `folded` notifications.
pub fn fold_summary(folded: &[&Notification]) -> (String, String) {
    let alerts: usize = folded.iter().map(|n| n.alerts.len()).sum();
    let mut names: Vec<&str> = folded
        .iter()
        .flat_map(|n| n.alerts.iter().map(Alert::name))
        .collect();
    names.sort_unstable();
    names.dedup();
    let subject = format!(
        "[SUMMARY] {} notification(s) held back by flood control",
        folded.len()
    );
    let text = format!(
        "{} notification(s) with {} alert(s) exceeded the rate limit and were folded into this summary. Alerts: {}",
        folded.len(),
        alerts,
        names.join(", ")
    );
    (subject, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::payload::parse;

    fn sample(n_alerts: usize, status: &str) -> Notification {
        let alerts: Vec<String> = (0..n_alerts)
            .map(|i| {
                format!(
                    r#"{{"status":"{status}","labels":{{"alertname":"DiskFull","instance":"host-{i}"}},
                    "annotations":{{"summary":"Disk <b>almost</b> full","description":"only 1% left"}},
                    "startsAt":"2024-01-01T00:00:00Z","endsAt":"0001-01-01T00:00:00Z",
                    "generatorURL":"http://prom/graph?g0","fingerprint":"{i:016x}"}}"#
                )
            })
            .collect();
        let body = format!(
            r#"{{"version":"4","groupKey":"{{}}:{{alertname=\"DiskFull\"}}","status":"{status}","receiver":"ops",
            "groupLabels":{{"alertname":"DiskFull"}},"commonLabels":{{}},"commonAnnotations":{{}},
            "externalURL":"http://am:9093","alerts":[{}]}}"#,
            alerts.join(",")
        );
        parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn default_email_has_subject_text_and_escaped_html() {
        let t = Templates::new(None, None, None, None).unwrap();
        let (subject, text, html) = t.email(&sample(2, "firing")).unwrap();
        assert_eq!(subject, "[FIRING:2] DiskFull");
        assert!(text.contains("[FIRING] DiskFull since 2024-01-01T00:00:00Z"));
        assert!(text.contains("Summary: Disk <b>almost</b> full"));
        assert!(text.contains("Source: http://prom/graph?g0"));
        assert!(
            html.contains("Disk &lt;b&gt;almost&lt;&#x2f;b&gt; full"),
            "{html}"
        );
        let (subject, text, _) = t.email(&sample(1, "resolved")).unwrap();
        assert_eq!(subject, "[RESOLVED] DiskFull");
        assert!(text.starts_with("RESOLVED"));
    }

    #[test]
    fn html_links_only_http_and_https_urls() {
        let t = Templates::new(None, None, None, None).unwrap();
        let mut n = sample(1, "firing");
        n.external_url = "data:text/html,<script>alert(2)</script>".into();
        let hostile = [
            "javascript:alert(1)",
            " JaVaScRiPt:alert(1)",
            "java\tscript:alert(1)",
            "vbscript:msgbox(1)",
            "//evil.example/x",
        ];
        for (i, url) in hostile.iter().enumerate() {
            let a = &mut n.alerts[0];
            a.generator_url = url.to_string();
            a.silence_url = format!("http://am:9093/#/silences/new?{i}\"onclick=\"x");
            let (_, text, html) = t.email(&n).unwrap();
            let lower = html.to_lowercase();
            assert!(!lower.contains("href=\"java"), "{url}: {html}");
            assert!(!lower.contains("href=\"vbscript"), "{url}: {html}");
            assert!(!lower.contains("href=\"data"), "{url}: {html}");
            assert!(!lower.contains("href=\"&#x2f;&#x2f;"), "{url}: {html}");
            assert!(!html.contains("<script>"), "{html}");
            // Shown as text instead, escaped.
            assert!(html.contains("Source: "), "{html}");
            assert!(
                html.contains("Alertmanager: data:text&#x2f;html,&lt;script&gt;"),
                "{html}"
            );
            // The http link stays a link; its quote cannot end the attribute.
            assert!(
                html.contains("<a href=\"http:&#x2f;&#x2f;am:9093&#x2f;#&#x2f;silences&#x2f;new?"),
                "{html}"
            );
            assert!(!html.contains("\"onclick"), "{html}");
            assert!(text.contains(&format!("Source: {url}")) || url.contains('\t'));
        }
        let (_, _, html) = t.email(&sample(1, "firing")).unwrap();
        assert!(
            html.contains("<a href=\"http:&#x2f;&#x2f;prom&#x2f;graph?g0\">Source</a>"),
            "{html}"
        );
        assert!(
            html.contains("<a href=\"http:&#x2f;&#x2f;am:9093&#x2f;\">Alertmanager</a>"),
            "{html}"
        );
        assert_eq!(
            web_url("HTTPS://Example.com/a b"),
            Some("https://example.com/a%20b".into())
        );
        assert_eq!(web_url("mailto:a@b"), None);
    }

    #[test]
    fn bad_template_is_rejected() {
        assert!(Templates::new(Some("{% if %}"), None, None, None).is_err());
    }

    #[test]
    fn sms_lengths_follow_the_encoding() {
        assert_eq!(sms_units("hello"), (true, 5));
        assert_eq!(sms_units("a€"), (true, 3));
        assert_eq!(sms_units("Ünïcode ✓"), (false, 9));
        assert!(fits(&"a".repeat(160), 1));
        assert!(!fits(&"a".repeat(161), 1));
        assert!(fits(&"✓".repeat(70), 1));
        assert!(!fits(&"✓".repeat(71), 1));
        assert!(fits(&"a".repeat(306), 2));
    }

    #[test]
    fn sms_summary_says_how_many_more() {
        let text = sms_summary(&sample(10, "firing"), 1);
        assert!(text.starts_with("FIRING:10 DiskFull host-0: Disk <b>almost</b> full"));
        assert!(text.contains(" more"), "{text}");
        assert!(fits(&text, 1));
        let one = sms_summary(&sample(1, "firing"), 1);
        assert!(!one.contains("more"));
        let unicode = sms_summary(&sample(1, "firing"), 1).replace("Disk", "Dïsk ✓");
        assert!(!fits(&(unicode.clone() + &"x".repeat(40)), 1));
    }
}

//! Notifiers: e-mail over SMTP (lettre) and SMS through Twilio, Vonage or a
//! generic HTTP gateway. Each send is classified as delivered, transient
//! (retry with backoff, maybe after `Retry-After`) or permanent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use email_encoding::headers::rfc2047;
use email_encoding::headers::writer::EmailWriter;
use lettre::message::header::{self, ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use minijinja::Environment;

use super::config::{AuthMechanism, SmsProviderConfig, SmsProviderKind, SmtpConfig, TlsMode};
use super::payload::Notification;
use super::templates::{self, TemplateError, Templates};

/// Why a send did not succeed; `reason` is a bounded metric label.
#[derive(Debug, Clone)]
pub struct DeliveryError {
    pub permanent: bool,
    pub reason: &'static str,
    /// Wait at least this long before the next attempt (from `Retry-After`).
    pub retry_after: Option<Duration>,
    /// Human-readable detail for the log; never contains secrets.
    pub detail: String,
}

impl DeliveryError {
    fn transient(reason: &'static str, detail: String) -> Self {
        DeliveryError {
            permanent: false,
            reason,
            retry_after: None,
            detail,
        }
    }
    fn permanent(reason: &'static str, detail: String) -> Self {
        DeliveryError {
            permanent: true,
            reason,
            retry_after: None,
            detail,
        }
    }
}

/// A rendered message ready to send.
pub struct Outgoing<'a> {
    pub subject: &'a str,
    pub text: &'a str,
    pub html: Option<&'a str>,
    /// Unique per job: `<id@domain>`; also the SMS idempotency key.
    pub message_id: &'a str,
    /// The thread root of the alert group: `<group@domain>`.
    pub thread_id: &'a str,
    pub recipient: Option<&'a str>,
    pub job_id: u64,
}

/// A channel's way out. Everything that differs between the kinds of
/// channel (who gets a job, how a message is rendered and cut, how it is
/// sent) is answered here, by the variant; the rest of the relay never asks
/// which kind it has. Adding a notifier is a variant and its arms here,
/// plus its config and the arm of `Runtime::build` that builds it.
pub enum Notifier {
    /// One mail per notification, to the channel's own list.
    Email(EmailNotifier),
    /// One message per number, of at most `max_segments` segments.
    Sms {
        /// Shared by every channel that names the provider.
        provider: Arc<SmsNotifier>,
        to: Vec<String>,
        max_segments: usize,
    },
}

impl Notifier {
    /// The recipient of each job one notification makes (`None`: the
    /// notifier's own list).
    pub fn recipients(&self) -> Vec<Option<String>> {
        match self {
            Notifier::Email(_) => vec![None],
            Notifier::Sms { to, .. } => to.iter().cloned().map(Some).collect(),
        }
    }

    /// Subject, text and HTML body of a notification (an SMS has only the
    /// text, cut to fit).
    pub fn render(
        &self,
        templates: &Templates,
        n: &Notification,
    ) -> Result<(String, String, Option<String>), TemplateError> {
        match self {
            Notifier::Email(_) => {
                let (s, t, h) = templates.email(n)?;
                Ok((s, t, Some(h)))
            }
            Notifier::Sms { max_segments, .. } => {
                Ok((String::new(), templates.sms(n, *max_segments)?, None))
            }
        }
    }

    /// A summary text as the notifier can carry it.
    pub fn fit(&self, text: String) -> String {
        match self {
            Notifier::Email(_) => text,
            Notifier::Sms { max_segments, .. } => templates::truncate_to_fit(&text, *max_segments),
        }
    }

    pub async fn send(&self, msg: &Outgoing<'_>) -> Result<(), DeliveryError> {
        match self {
            Notifier::Email(e) => e.send(msg).await,
            Notifier::Sms { provider, .. } => provider.send(msg).await,
        }
    }
}

pub struct EmailNotifier {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl EmailNotifier {
    pub fn new(smtp: &SmtpConfig, from: &str, to: &[String]) -> Result<EmailNotifier, String> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| format!("`from` {from:?} is not a mailbox: {e}"))?;
        if to.is_empty() {
            return Err("`to` needs at least one address".into());
        }
        let to = to
            .iter()
            .map(|t| {
                t.parse::<Mailbox>()
                    .map_err(|e| format!("`to` {t:?} is not a mailbox: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tls = if smtp.tls == TlsMode::None {
            Tls::None
        } else {
            let mut b = TlsParameters::builder(smtp.host.clone());
            if let Some(ca) = &smtp.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
                b = b
                    .certificate_store(CertificateStore::None)
                    .add_root_certificate(cert);
            }
            let params = b.build_rustls().map_err(|e| format!("TLS set-up: {e}"))?;
            match smtp.tls {
                TlsMode::Implicit => Tls::Wrapper(params),
                _ => Tls::Required(params),
            }
        };
        let port = smtp.port.unwrap_or(match smtp.tls {
            TlsMode::Implicit => 465,
            TlsMode::Starttls => 587,
            TlsMode::None => 25,
        });
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            .port(port)
            .tls(tls)
            .timeout(Some(smtp.timeout));
        if let Some(user) = &smtp.username {
            let password = match &smtp.password {
                Some(s) => s.resolve().map_err(|e| format!("smtp.password: {e}"))?,
                None => return Err("smtp.username is set but smtp.password is not".into()),
            };
            builder = builder.credentials(Credentials::new(user.clone(), password));
            let mechanisms: Vec<Mechanism> = if smtp.auth.is_empty() {
                vec![Mechanism::Plain, Mechanism::Login]
            } else {
                smtp.auth
                    .iter()
                    .map(|m| match m {
                        AuthMechanism::Plain => Mechanism::Plain,
                        AuthMechanism::Login => Mechanism::Login,
                        AuthMechanism::Xoauth2 => Mechanism::Xoauth2,
                    })
                    .collect()
            };
            builder = builder.authentication(mechanisms);
        }
        Ok(EmailNotifier {
            transport: builder.build(),
            from,
            to,
        })
    }

    async fn send(&self, msg: &Outgoing<'_>) -> Result<(), DeliveryError> {
        let email = build_message(&self.from, &self.to, msg)
            .map_err(|e| DeliveryError::permanent("message", e.to_string()))?;
        match self.transport.send(email).await {
            Ok(_) => Ok(()),
            // A refused login is a configuration problem (or an expired
            // OAuth token), not a bad message: retry until it is fixed.
            Err(e) if e.status().is_some_and(|c| is_auth_failure(c.into())) => {
                Err(DeliveryError::transient("smtp_auth", e.to_string()))
            }
            Err(e) if e.is_permanent() => Err(DeliveryError::permanent("smtp_5xx", e.to_string())),
            Err(e) if e.is_transient() => Err(DeliveryError::transient("smtp_4xx", e.to_string())),
            Err(e) if e.is_timeout() => Err(DeliveryError::transient("timeout", e.to_string())),
            Err(e) if e.is_tls() => Err(DeliveryError::transient("tls", e.to_string())),
            Err(e) => Err(DeliveryError::transient("connect", e.to_string())),
        }
    }
}

/// The e-mail of `msg`. Every line fits RFC 5322's limit: the subject is
/// [`Subject`]; lettre picks 7bit, quoted-printable or base64 for each body
/// by its longest line and its characters, so a long body line is encoded.
fn build_message(
    from: &Mailbox,
    to: &[Mailbox],
    msg: &Outgoing<'_>,
) -> Result<Message, lettre::error::Error> {
    let mut b = Message::builder()
        .from(from.clone())
        .header(Subject(msg.subject.to_string()))
        .message_id(Some(msg.message_id.to_string()))
        .in_reply_to(msg.thread_id.to_string())
        .references(msg.thread_id.to_string());
    for to in to {
        b = b.to(to.clone());
    }
    let text = SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .body(msg.text.to_string());
    match msg.html {
        Some(html) => b.multipart(
            MultiPart::alternative().singlepart(text).singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_HTML)
                    .body(html.to_string()),
            ),
        ),
        None => b.singlepart(text),
    }
}

/// The Subject header, with no line longer than RFC 5322 allows. lettre
/// folds a header at spaces and RFC 2047-encodes the words that need it,
/// but writes a plain ASCII word as it is however long, so a subject with
/// a word too long for one line (a 1,000-character alert name) would make
/// a line the server refuses (`500 Line too long`). Such a subject is sent
/// as encoded words instead, which may be split anywhere and decode to the
/// same text.
#[derive(Clone)]
struct Subject(String);

/// The longest word lettre's folding fits on a line: it folds at 76
/// characters, and a continuation line starts with a space.
const LONGEST_PLAIN_WORD: usize = 76 - 1;

impl Header for Subject {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Subject")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Subject(s.to_string()))
    }

    fn display(&self) -> HeaderValue {
        if self
            .0
            .split_whitespace()
            .all(|w| w.len() <= LONGEST_PLAIN_WORD)
        {
            return header::Subject::from(self.0.clone()).display();
        }
        let mut encoded = String::with_capacity(self.0.len() * 2);
        {
            let mut w = EmailWriter::new(&mut encoded, "Subject: ".len(), 0, false);
            // Writing into a String cannot fail.
            let _ = rfc2047::encode(&self.0, &mut w);
        }
        HeaderValue::dangerous_new_pre_encoded(Self::name(), self.0.clone(), encoded)
    }
}

/// SMTP replies that refuse the login rather than the message: 530 (auth
/// required), 534 (mechanism too weak), 535 (credentials invalid) and 538
/// (encryption required), RFC 4954.
fn is_auth_failure(code: u16) -> bool {
    matches!(code, 530 | 534 | 535 | 538)
}

pub struct SmsNotifier {
    client: reqwest::Client,
    provider: Provider,
}

enum Provider {
    Twilio {
        url: String,
        account_sid: String,
        auth_token: String,
        from: Option<String>,
        messaging_service_sid: Option<String>,
    },
    Vonage {
        url: String,
        api_key: String,
        api_secret: String,
        from: String,
    },
    Http {
        method: reqwest::Method,
        url: String,
        headers: BTreeMap<String, String>,
        bearer_token: Option<String>,
        /// Boxed: an `Environment` is large next to the other providers.
        body: Box<Environment<'static>>,
        content_type: String,
        from: String,
        retry_statuses: Vec<u16>,
    },
}

impl SmsNotifier {
    pub fn new(cfg: &SmsProviderConfig) -> Result<SmsNotifier, String> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("vitals-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let provider = match &cfg.kind {
            SmsProviderKind::Twilio {
                account_sid,
                auth_token,
                from,
                messaging_service_sid,
                base_url,
            } => {
                if from.is_none() == messaging_service_sid.is_none() {
                    return Err("set exactly one of `from` and `messaging_service_sid`".into());
                }
                Provider::Twilio {
                    url: format!(
                        "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
                        base_url.trim_end_matches('/')
                    ),
                    account_sid: account_sid.clone(),
                    auth_token: auth_token
                        .resolve()
                        .map_err(|e| format!("auth_token: {e}"))?,
                    from: from.clone(),
                    messaging_service_sid: messaging_service_sid.clone(),
                }
            }
            SmsProviderKind::Vonage {
                api_key,
                api_secret,
                from,
                base_url,
            } => Provider::Vonage {
                url: format!("{}/sms/json", base_url.trim_end_matches('/')),
                api_key: api_key.clone(),
                api_secret: api_secret
                    .resolve()
                    .map_err(|e| format!("api_secret: {e}"))?,
                from: from.clone(),
            },
            SmsProviderKind::Http {
                method,
                url,
                headers,
                bearer_token,
                body_template,
                content_type,
                from,
                retry_statuses,
            } => {
                let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("method {method:?} is not an HTTP method"))?;
                reqwest::Url::parse(url).map_err(|e| format!("url {url:?}: {e}"))?;
                let mut env = Environment::new();
                if content_type.contains("json") {
                    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Json);
                }
                env.add_template_owned("body", body_template.clone())
                    .map_err(|e| format!("body_template: {e}"))?;
                for (k, v) in headers {
                    reqwest::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| format!("headers: {k:?} is not a header name"))?;
                    reqwest::header::HeaderValue::from_str(v)
                        .map_err(|_| format!("headers.{k}: not a valid header value"))?;
                }
                Provider::Http {
                    method,
                    url: url.clone(),
                    headers: headers.clone(),
                    bearer_token: bearer_token
                        .as_ref()
                        .map(|t| t.resolve().map_err(|e| format!("bearer_token: {e}")))
                        .transpose()?,
                    body: Box::new(env),
                    content_type: content_type.clone(),
                    from: from.clone().unwrap_or_default(),
                    retry_statuses: retry_statuses.clone(),
                }
            }
        };
        Ok(SmsNotifier { client, provider })
    }

    async fn send(&self, msg: &Outgoing<'_>) -> Result<(), DeliveryError> {
        let to = msg.recipient.unwrap_or_default();
        let key = msg.message_id.trim_matches(['<', '>']);
        match &self.provider {
            Provider::Twilio {
                url,
                account_sid,
                auth_token,
                from,
                messaging_service_sid,
            } => {
                let mut form = vec![("To", to), ("Body", msg.text)];
                if let Some(f) = from {
                    form.push(("From", f));
                }
                if let Some(s) = messaging_service_sid {
                    form.push(("MessagingServiceSid", s));
                }
                let resp = self
                    .client
                    .post(url)
                    .basic_auth(account_sid, Some(auth_token))
                    .header("I-Twilio-Idempotency-Token", key)
                    .form(&form)
                    .send()
                    .await
                    .map_err(transport_error)?;
                classify(resp, &[429, 500, 502, 503, 504]).await.map(|_| ())
            }
            Provider::Vonage {
                url,
                api_key,
                api_secret,
                from,
            } => {
                let form = [
                    ("api_key", api_key.as_str()),
                    ("api_secret", api_secret.as_str()),
                    ("from", from.as_str()),
                    ("to", to.trim_start_matches('+')),
                    ("text", msg.text),
                    ("client-ref", key),
                ];
                let resp = self
                    .client
                    .post(url)
                    .form(&form)
                    .send()
                    .await
                    .map_err(transport_error)?;
                let body = classify(resp, &[429, 500, 502, 503, 504]).await?;
                vonage_result(&body)
            }
            Provider::Http {
                method,
                url,
                headers,
                bearer_token,
                body,
                content_type,
                from,
                retry_statuses,
            } => {
                let rendered = body
                    .get_template("body")
                    .and_then(|t| {
                        t.render(minijinja::context! {
                            to => to, from => from, text => msg.text, id => key,
                            subject => msg.subject,
                        })
                    })
                    .map_err(|e| DeliveryError::permanent("template", e.to_string()))?;
                let mut req = self
                    .client
                    .request(method.clone(), url)
                    .header(reqwest::header::CONTENT_TYPE, content_type)
                    .header("Idempotency-Key", key);
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                if let Some(t) = bearer_token {
                    req = req.bearer_auth(t);
                }
                let resp = req.body(rendered).send().await.map_err(transport_error)?;
                classify(resp, retry_statuses).await.map(|_| ())
            }
        }
    }
}

fn transport_error(e: reqwest::Error) -> DeliveryError {
    let reason = if e.is_timeout() { "timeout" } else { "connect" };
    // Without the URL: it may carry credentials.
    DeliveryError::transient(reason, e.without_url().to_string())
}

/// 2xx → the body; a retryable status → transient (with `Retry-After`);
/// any other → permanent.
async fn classify(resp: reqwest::Response, retry: &[u16]) -> Result<String, DeliveryError> {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() {
        return Ok(body);
    }
    let snippet: String = body.chars().take(200).collect();
    let detail = format!("gateway answered {status}: {snippet}");
    let code = status.as_u16();
    if retry.contains(&code) {
        let reason = if code == 429 {
            "http_429"
        } else if status.is_server_error() {
            "http_5xx"
        } else {
            "http_4xx"
        };
        Err(DeliveryError {
            permanent: false,
            reason,
            retry_after,
            detail,
        })
    } else if status.is_server_error() {
        Err(DeliveryError::permanent("http_5xx", detail))
    } else {
        Err(DeliveryError::permanent("http_4xx", detail))
    }
}

/// Vonage's legacy API answers 200 with a status per message part.
fn vonage_result(body: &str) -> Result<(), DeliveryError> {
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|_| DeliveryError::transient("bad_response", "unparsable Vonage answer".into()))?;
    let messages = v
        .get("messages")
        .and_then(|m| m.as_array())
        .ok_or_else(|| DeliveryError::transient("bad_response", "no messages in answer".into()))?;
    for m in messages {
        let status = m.get("status").and_then(|s| s.as_str()).unwrap_or("");
        let text = m.get("error-text").and_then(|s| s.as_str()).unwrap_or("");
        match status {
            "0" => {}
            "1" | "5" => {
                return Err(DeliveryError::transient(
                    "provider_status",
                    format!("Vonage status {status}: {text}"),
                ));
            }
            _ => {
                return Err(DeliveryError::permanent(
                    "provider_status",
                    format!("Vonage status {status}: {text}"),
                ));
            }
        }
    }
    Ok(())
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_line_of_a_mail_exceeds_rfc_5322_whatever_its_subject_and_body() {
        let from: Mailbox = "relay <a@example.com>".parse().unwrap();
        let to: Vec<Mailbox> = vec!["b@example.com".parse().unwrap()];
        let long = "A".repeat(10_000);
        let unicode = "ünïcødé✓".repeat(1250);
        for subject in [
            format!("[FIRING:1] {long}"),
            format!("[FIRING:1] {unicode} x={long}"),
            format!("[FIRING:1] {} DiskFull", "word ".repeat(400)),
            "[FIRING:2] DiskFull".to_string(),
        ] {
            let text = format!("{long}\n{unicode}\n");
            let msg = Outgoing {
                subject: &subject,
                text: &text,
                html: Some(&text),
                message_id: "<1.k@relay.test>",
                thread_id: "<g@relay.test>",
                recipient: None,
                job_id: 1,
            };
            let raw = build_message(&from, &to, &msg).unwrap().formatted();
            let raw = String::from_utf8(raw).unwrap();
            for line in raw.split("\r\n") {
                assert!(
                    line.len() <= 998,
                    "{} characters: {}",
                    line.len(),
                    line.chars().take(80).collect::<String>()
                );
            }
            // Short subjects keep their plain form.
            if subject.len() < 60 {
                assert!(raw.contains(&format!("Subject: {subject}\r\n")), "{raw}");
            }
        }
    }

    #[test]
    fn refused_logins_are_told_from_refused_messages() {
        for code in [530, 534, 535, 538] {
            assert!(is_auth_failure(code), "{code}");
        }
        for code in [550, 551, 552, 553, 554, 421, 450] {
            assert!(!is_auth_failure(code), "{code}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn vonage_statuses() {
        assert!(vonage_result(r#"{"message-count":"1","messages":[{"status":"0"}]}"#).is_ok());
        let e =
            vonage_result(r#"{"messages":[{"status":"1","error-text":"Throttled"}]}"#).unwrap_err();
        assert!(!e.permanent);
        let e =
            vonage_result(r#"{"messages":[{"status":"9","error-text":"Partner quota exceeded"}]}"#)
                .unwrap_err();
        assert!(e.permanent);
        assert!(!vonage_result("oops").unwrap_err().permanent);
    }
}

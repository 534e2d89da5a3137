//! A validated relay configuration, turned into what the handlers and
//! workers use: receivers with their authentication, channels with
//! compiled matchers, templates and notifiers. Built in full before it
//! replaces the running one, so a bad reload changes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ConfigError;

use super::config::{
    AuthConfig, ChannelKind, RateLimitConfig, RelayConfig, RetryConfig, Secret, SmsProviderConfig,
    SmsProviderKind,
};
use super::notify::{EmailNotifier, Notifier, SmsNotifier};
use super::routing::Matcher;
use super::templates::Templates;

pub struct Runtime {
    pub cfg: RelayConfig,
    pub receivers: HashMap<String, Receiver>,
    pub channels: HashMap<String, Arc<Channel>>,
    /// What was not read because the runtime was built with `skip_secrets`
    /// (`vitals check --skip-secrets`): `key (env:NAME)`, `key (file:/path)`;
    /// always empty for a runtime that runs.
    pub not_read: Vec<String>,
}

pub struct Receiver {
    pub name: String,
    pub auth: Auth,
    pub channels: Vec<String>,
}

pub enum Auth {
    Bearer(String),
    /// User → bcrypt hash.
    Basic(BTreeMap<String, String>),
    Hmac {
        secret: Vec<u8>,
        header: String,
        timestamp_header: Option<String>,
    },
    None,
}

pub struct Channel {
    pub name: String,
    pub matchers: Vec<Matcher>,
    pub rate_limit: Option<RateLimitConfig>,
    pub templates: Templates,
    pub notifier: Notifier,
    pub parallelism: usize,
}

impl Runtime {
    /// Validate `cfg` and build every part, reading secrets and CA files
    /// exactly as `vitals relay` does. With `skip_secrets`, the secrets
    /// given as `env:`/`file:` and the CA files are not read (they may live
    /// only where the relay runs); each one skipped is listed in
    /// [`Runtime::not_read`].
    pub fn build(cfg: RelayConfig, file: &str, skip_secrets: bool) -> Result<Runtime, ConfigError> {
        let check_only = skip_secrets;
        let mut not_read: Vec<String> = Vec::new();
        let invalid = |key: String, reason: String| ConfigError::Invalid {
            file: file.to_string(),
            key,
            reason,
        };
        if cfg.max_body_bytes < 1024 {
            return Err(invalid(
                "relay.max_body_bytes".into(),
                "must be at least 1024".into(),
            ));
        }
        validate_retry(&cfg.retry).map_err(|(k, r)| invalid(format!("relay.retry.{k}"), r))?;
        cfg.web
            .check()
            .map_err(|(k, r)| invalid(format!("relay.web.{k}"), r.into()))?;
        // `None`: not read (`skip_secrets`), and listed in `not_read`.
        let secret = |s: &Secret,
                      key: String,
                      not_read: &mut Vec<String>|
         -> Result<Option<String>, ConfigError> {
            if check_only && s.is_external() {
                not_read.push(format!("{key} ({})", s.source()));
                Ok(None)
            } else {
                s.resolve().map(Some).map_err(|r| invalid(key, r))
            }
        };

        let mut providers: HashMap<&str, Arc<SmsNotifier>> = HashMap::new();
        for (i, p) in cfg.sms_providers.iter().enumerate() {
            let key = format!("relay.sms_providers[{i}]");
            if providers.contains_key(p.name.as_str()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("provider {:?} is defined twice", p.name),
                ));
            }
            let n = build_sms(p, check_only, &key, &mut not_read).map_err(|r| invalid(key, r))?;
            providers.insert(&p.name, Arc::new(n));
        }

        let mut channels = HashMap::new();
        for (i, c) in cfg.channels.iter().enumerate() {
            let key = format!("relay.channels[{i}]");
            if c.name.is_empty() || channels.contains_key(&c.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("channel {:?} is empty or defined twice", c.name),
                ));
            }
            let matchers = c
                .matchers
                .iter()
                .map(|m| Matcher::parse(m))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|r| invalid(format!("{key}.matchers"), r))?;
            if c.parallelism == 0 || c.parallelism > 64 {
                return Err(invalid(
                    format!("{key}.parallelism"),
                    "must be between 1 and 64".into(),
                ));
            }
            if let Some(rl) = &c.rate_limit
                && (rl.max == 0 || rl.per.is_zero())
            {
                return Err(invalid(
                    format!("{key}.rate_limit"),
                    "max and per must be greater than zero".into(),
                ));
            }
            let channel = match &c.kind {
                ChannelKind::Email(e) => {
                    let templates = Templates::new(
                        e.subject_template.as_deref(),
                        e.text_template.as_deref(),
                        e.html_template.as_deref(),
                        None,
                    )
                    .map_err(|err| invalid(format!("{key}.{}", err.name), err.reason))?;
                    let mut smtp = e.smtp.clone();
                    if check_only && let Some(ca) = smtp.ca_file.take() {
                        not_read.push(format!("{key}.smtp.ca_file ({})", ca.display()));
                    }
                    // Read here for an error naming the key; EmailNotifier
                    // reads it again.
                    if let Some(p) = &smtp.password
                        && secret(p, format!("{key}.smtp.password"), &mut not_read)?.is_none()
                    {
                        smtp.password = Some(Secret::literal(""));
                    }
                    let notifier = EmailNotifier::new(&smtp, &e.from, &e.to)
                        .map_err(|r| invalid(key.clone(), r))?;
                    Channel {
                        name: c.name.clone(),
                        matchers,
                        rate_limit: c.rate_limit.clone(),
                        templates,
                        notifier: Notifier::Email(notifier),
                        parallelism: c.parallelism,
                    }
                }
                ChannelKind::Sms(s) => {
                    let provider =
                        providers.get(s.provider.as_str()).cloned().ok_or_else(|| {
                            invalid(
                                format!("{key}.provider"),
                                format!("no sms_providers entry is named {:?}", s.provider),
                            )
                        })?;
                    if s.to.is_empty() {
                        return Err(invalid(
                            format!("{key}.to"),
                            "needs at least one number".into(),
                        ));
                    }
                    let mut seen = HashSet::new();
                    for t in &s.to {
                        if !seen.insert(t) {
                            return Err(invalid(
                                format!("{key}.to"),
                                format!("number {t:?} is listed twice"),
                            ));
                        }
                    }
                    if s.max_segments == 0 || s.max_segments > 10 {
                        return Err(invalid(
                            format!("{key}.max_segments"),
                            "must be between 1 and 10".into(),
                        ));
                    }
                    let templates = Templates::new(None, None, None, s.text_template.as_deref())
                        .map_err(|err| invalid(format!("{key}.text_template"), err.reason))?;
                    Channel {
                        name: c.name.clone(),
                        matchers,
                        rate_limit: c.rate_limit.clone(),
                        templates,
                        notifier: Notifier::Sms {
                            provider,
                            to: s.to.clone(),
                            max_segments: s.max_segments,
                        },
                        parallelism: c.parallelism,
                    }
                }
            };
            channels.insert(c.name.clone(), Arc::new(channel));
        }

        let mut receivers = HashMap::new();
        for (i, r) in cfg.receivers.iter().enumerate() {
            let key = format!("relay.receivers[{i}]");
            if r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(invalid(
                    format!("{key}.name"),
                    "must be non-empty and use only letters, digits, '-', '_' and '.'".into(),
                ));
            }
            if receivers.contains_key(&r.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("receiver {:?} is defined twice", r.name),
                ));
            }
            if r.channels.is_empty() {
                return Err(invalid(
                    format!("{key}.channels"),
                    "needs at least one channel".into(),
                ));
            }
            for c in &r.channels {
                if !channels.contains_key(c) {
                    return Err(invalid(
                        format!("{key}.channels"),
                        format!("no channel is named {c:?}"),
                    ));
                }
            }
            let auth = match &r.auth {
                AuthConfig::Bearer { token } => {
                    let t = secret(token, format!("{key}.auth.token"), &mut not_read)?;
                    if t.as_deref().is_some_and(str::is_empty) {
                        return Err(invalid(
                            format!("{key}.auth.token"),
                            "must not be empty".into(),
                        ));
                    }
                    Auth::Bearer(t.unwrap_or_default())
                }
                AuthConfig::Basic { users } => {
                    if users.is_empty() {
                        return Err(invalid(
                            format!("{key}.auth.users"),
                            "needs at least one user".into(),
                        ));
                    }
                    for (u, h) in users {
                        if h.parse::<bcrypt::HashParts>().is_err() {
                            return Err(invalid(
                                format!("{key}.auth.users.{u}"),
                                "is not a bcrypt hash ($2a$/$2b$/$2y$)".into(),
                            ));
                        }
                    }
                    Auth::Basic(users.clone())
                }
                AuthConfig::Hmac {
                    secret: s,
                    header,
                    timestamp_header,
                } => Auth::Hmac {
                    secret: secret(s, format!("{key}.auth.secret"), &mut not_read)?
                        .unwrap_or_default()
                        .into_bytes(),
                    header: header.clone(),
                    timestamp_header: timestamp_header.clone(),
                },
                AuthConfig::None => Auth::None,
            };
            receivers.insert(
                r.name.clone(),
                Receiver {
                    name: r.name.clone(),
                    auth,
                    channels: r.channels.clone(),
                },
            );
        }
        if receivers.is_empty() {
            return Err(invalid(
                "relay.receivers".into(),
                "needs at least one receiver".into(),
            ));
        }
        Ok(Runtime {
            cfg,
            receivers,
            channels,
            not_read,
        })
    }

    /// Read, parse and build the file at `path`.
    pub fn load(path: &Path, skip_secrets: bool) -> Result<Runtime, ConfigError> {
        let cfg = super::config::parse_file(path)?;
        Runtime::build(cfg, &path.display().to_string(), skip_secrets)
    }
}

/// An SMS provider; with `skip_secrets` its `env:`/`file:` secrets are
/// replaced by placeholders and listed in `not_read`.
fn build_sms(
    p: &SmsProviderConfig,
    skip_secrets: bool,
    key: &str,
    not_read: &mut Vec<String>,
) -> Result<SmsNotifier, String> {
    if skip_secrets {
        let mut p = p.clone();
        let secret = match &p.kind {
            SmsProviderKind::Twilio { auth_token, .. } => Some(("auth_token", auth_token)),
            SmsProviderKind::Vonage { api_secret, .. } => Some(("api_secret", api_secret)),
            SmsProviderKind::Http { bearer_token, .. } => {
                bearer_token.as_ref().map(|t| ("bearer_token", t))
            }
        };
        if let Some((name, s)) = secret
            && s.is_external()
        {
            not_read.push(format!("{key}.{name} ({})", s.source()));
            p.kind = p.kind.with_placeholder_secrets();
        }
        SmsNotifier::new(&p)
    } else {
        SmsNotifier::new(p)
    }
}

fn validate_retry(r: &RetryConfig) -> Result<(), (&'static str, String)> {
    if r.initial_backoff < Duration::from_millis(10) {
        return Err(("initial_backoff", "must be at least 10ms".into()));
    }
    if r.max_backoff < r.initial_backoff {
        return Err(("max_backoff", "must not be below initial_backoff".into()));
    }
    if !(1.0..=10.0).contains(&r.multiplier) {
        return Err(("multiplier", "must be between 1 and 10".into()));
    }
    if r.give_up_after < r.max_backoff {
        return Err(("give_up_after", "must not be below max_backoff".into()));
    }
    Ok(())
}

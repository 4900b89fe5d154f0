//! The emulator's configuration file: a seed, the consumer group, and per
//! provider a success rate, weighted decline codes (retryable or not),
//! latency, duplicate and out-of-order rates and the decline code of an
//! expired token. Read in two stages like the main settings: a raw serde
//! shape (`deny_unknown_fields`), then validated into `GatewayConfig`,
//! where every error names the field (`providers.acme.success_rate: ...`).
//! The documented example is `config/gateway.toml`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::parse_duration;

/// The longest `latency` + `latency_jitter`: a result is dated its
/// request's instant plus its latency, and the engine dead-letters an input
/// dated more than `billing.future_tolerance` (5m by default, at most 1d)
/// ahead of its clock.
pub const MAX_LATENCY: Duration = Duration::from_secs(60);
/// The longest `duplicate_delay` and `out_of_order_delay`: a request's
/// offset is committed only once all its results are published.
pub const MAX_DELAY: Duration = Duration::from_secs(600);

/// A configuration that cannot be used; the gateway does not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayConfigError {
    /// The file cannot be read.
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    /// Not TOML, or a field of the wrong type or an unknown one.
    #[error("gateway configuration: {0}")]
    Shape(String),
    /// A field has a value the emulator cannot use.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> GatewayConfigError {
    GatewayConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// One decline code a provider answers with.
#[derive(Debug, Clone, PartialEq)]
pub struct Decline {
    /// Reason code in `PaymentFailed.reason`, e.g. `insufficient_funds`.
    pub code: String,
    /// Whether a later attempt can succeed (`PaymentFailed.retryable`).
    pub retryable: bool,
    /// Relative weight among the provider's declines (at least 1).
    pub weight: u32,
}

/// How one emulated provider answers.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// Share of charges that succeed, 0 to 1.
    pub success_rate: f64,
    /// What the others fail with, by weight.
    pub declines: Vec<Decline>,
    /// Time from request to result...
    pub latency: Duration,
    /// ...plus up to this much more, drawn per charge.
    pub latency_jitter: Duration,
    /// Share of results published twice (byte-identical), 0 to 1...
    pub duplicate_rate: f64,
    /// ...the copy this long after the first.
    pub duplicate_delay: Duration,
    /// Share of results held back, 0 to 1, so later ones overtake them...
    pub out_of_order_rate: f64,
    /// ...by this much.
    pub out_of_order_delay: Duration,
    /// The (non-retryable) decline code of a charge on an expired token.
    pub expired_token_code: String,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Seed of every draw: the same seed, provider settings and charge
    /// give the same result, in every run.
    pub seed: u64,
    /// Consumer group of the charges topic.
    pub group_id: String,
    /// Provider of token references that name none (`None`: such a request
    /// is dead-lettered `unknown_provider`).
    pub default_provider: Option<String>,
    /// By name, as it appears in `tok_<provider>_…`.
    pub providers: BTreeMap<String, ProviderConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    seed: Option<i64>,
    #[serde(default = "default_group")]
    group_id: String,
    #[serde(default)]
    default_provider: String,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
}

fn default_group() -> String {
    "billstream-gateway".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    success_rate: Option<f64>,
    #[serde(default)]
    declines: Vec<RawDecline>,
    #[serde(default = "zero")]
    latency: String,
    #[serde(default = "zero")]
    latency_jitter: String,
    #[serde(default)]
    duplicate_rate: f64,
    #[serde(default = "one_second")]
    duplicate_delay: String,
    #[serde(default)]
    out_of_order_rate: f64,
    #[serde(default = "one_second")]
    out_of_order_delay: String,
    #[serde(default = "expired_card")]
    expired_token_code: String,
}

fn zero() -> String {
    "0ms".into()
}

fn one_second() -> String {
    "1s".into()
}

fn expired_card() -> String {
    "expired_card".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecline {
    code: Option<String>,
    retryable: Option<bool>,
    #[serde(default = "weight_one")]
    weight: i64,
}

fn weight_one() -> i64 {
    1
}

impl GatewayConfig {
    /// Read and validate the file at `path`.
    pub fn load(path: &Path) -> Result<GatewayConfig, GatewayConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| GatewayConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        GatewayConfig::parse(&text)
    }

    /// Validate the TOML `text`.
    pub fn parse(text: &str) -> Result<GatewayConfig, GatewayConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| GatewayConfigError::Shape(e.to_string()))?;
        let seed = raw
            .seed
            .ok_or_else(|| invalid("seed", "missing: the seed every outcome is drawn from"))?;
        let seed =
            u64::try_from(seed).map_err(|_| invalid("seed", "must be a non-negative integer"))?;
        if raw.group_id.is_empty() || !kafka_name(&raw.group_id) {
            return Err(invalid(
                "group_id",
                "must be 1 to 249 letters, digits, '.', '-' or '_'",
            ));
        }
        if raw.providers.is_empty() {
            return Err(invalid(
                "providers",
                "name at least one provider ([providers.<name>])",
            ));
        }
        let mut providers = BTreeMap::new();
        for (name, p) in raw.providers {
            let provider = validate_provider(&name, p)?;
            providers.insert(name, provider);
        }
        let default_provider = match raw.default_provider.as_str() {
            "" => None,
            name if providers.contains_key(name) => Some(name.to_string()),
            name => {
                return Err(invalid(
                    "default_provider",
                    format!("{name:?} is not a configured provider"),
                ))
            }
        };
        Ok(GatewayConfig {
            seed,
            group_id: raw.group_id,
            default_provider,
            providers,
        })
    }
}

fn kafka_name(name: &str) -> bool {
    name.len() <= 249
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
}

/// A provider name: what `tok_<provider>_` can carry (no `_`).
fn provider_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A reason code: lower-case snake_case.
fn code_name(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn rate(field: &str, value: f64) -> Result<f64, GatewayConfigError> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(field, format!("{value} is not a rate from 0 to 1")))
    }
}

fn duration(field: &str, text: &str, max: Duration) -> Result<Duration, GatewayConfigError> {
    let d = parse_duration(text).ok_or_else(|| {
        invalid(
            field,
            format!("{text:?} is not a duration (write e.g. \"200ms\", \"2s\", \"1m\")"),
        )
    })?;
    if d > max {
        return Err(invalid(
            field,
            format!("{text:?} is longer than {}s", max.as_secs()),
        ));
    }
    Ok(d)
}

fn validate_provider(name: &str, p: RawProvider) -> Result<ProviderConfig, GatewayConfigError> {
    let at = |field: &str| format!("providers.{name}.{field}");
    if !provider_name(name) {
        return Err(invalid(
            format!("providers.{name}"),
            "a provider name is 1 to 64 of a-z, 0-9 and '-' (it is the <provider> of tok_<provider>_…, so no '_')",
        ));
    }
    let success_rate = rate(
        &at("success_rate"),
        p.success_rate
            .ok_or_else(|| invalid(at("success_rate"), "missing"))?,
    )?;
    let mut declines = Vec::with_capacity(p.declines.len());
    for (i, d) in p.declines.into_iter().enumerate() {
        let field = |f: &str| format!("providers.{name}.declines[{i}].{f}");
        let code = d.code.ok_or_else(|| invalid(field("code"), "missing"))?;
        if !code_name(&code) {
            return Err(invalid(
                field("code"),
                format!("{code:?} is not a reason code (1 to 64 of a-z, 0-9 and '_')"),
            ));
        }
        if declines.iter().any(|x: &Decline| x.code == code) {
            return Err(invalid(field("code"), format!("{code:?} is listed twice")));
        }
        let retryable = d.retryable.ok_or_else(|| {
            invalid(
                field("retryable"),
                "missing: say whether a later attempt can succeed",
            )
        })?;
        let weight = u32::try_from(d.weight)
            .ok()
            .filter(|w| (1..=1_000_000).contains(w))
            .ok_or_else(|| invalid(field("weight"), "must be from 1 to 1000000"))?;
        declines.push(Decline {
            code,
            retryable,
            weight,
        });
    }
    if success_rate < 1.0 && declines.is_empty() {
        return Err(invalid(
            at("declines"),
            "a provider whose success_rate is below 1 needs at least one decline code",
        ));
    }
    let latency = duration(&at("latency"), &p.latency, MAX_LATENCY)?;
    let latency_jitter = duration(&at("latency_jitter"), &p.latency_jitter, MAX_LATENCY)?;
    if latency + latency_jitter > MAX_LATENCY {
        return Err(invalid(
            at("latency_jitter"),
            format!(
                "latency + latency_jitter is more than {}s (results are dated request + latency; the engine rejects inputs dated ahead of its clock)",
                MAX_LATENCY.as_secs()
            ),
        ));
    }
    if !code_name(&p.expired_token_code) {
        return Err(invalid(
            at("expired_token_code"),
            format!("{:?} is not a reason code", p.expired_token_code),
        ));
    }
    Ok(ProviderConfig {
        success_rate,
        declines,
        latency,
        latency_jitter,
        duplicate_rate: rate(&at("duplicate_rate"), p.duplicate_rate)?,
        duplicate_delay: duration(&at("duplicate_delay"), &p.duplicate_delay, MAX_DELAY)?,
        out_of_order_rate: rate(&at("out_of_order_rate"), p.out_of_order_rate)?,
        out_of_order_delay: duration(&at("out_of_order_delay"), &p.out_of_order_delay, MAX_DELAY)?,
        expired_token_code: p.expired_token_code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
seed = 7
[providers.acme]
success_rate = 0.5
[[providers.acme.declines]]
code = "insufficient_funds"
retryable = true
"#;

    #[test]
    fn minimal_file_takes_the_defaults() {
        let c = GatewayConfig::parse(MINIMAL).unwrap();
        assert_eq!(c.seed, 7);
        assert_eq!(c.group_id, "billstream-gateway");
        assert_eq!(c.default_provider, None);
        let p = &c.providers["acme"];
        assert_eq!(p.latency, Duration::ZERO);
        assert_eq!(p.duplicate_rate, 0.0);
        assert_eq!(p.duplicate_delay, Duration::from_secs(1));
        assert_eq!(p.expired_token_code, "expired_card");
        assert_eq!(p.declines[0].weight, 1);
    }

    #[test]
    fn the_documented_example_file_is_valid() {
        let c = GatewayConfig::parse(include_str!("../../config/gateway.toml")).unwrap();
        assert!(
            c.providers.len() >= 2,
            "the example shows several providers"
        );
        assert!(c
            .providers
            .values()
            .any(|p| p.declines.iter().any(|d| !d.retryable)));
    }

    #[test]
    fn the_readme_example_is_the_example_file() {
        let readme = include_str!("../../README.md");
        let example = include_str!("../../config/gateway.toml");
        assert!(
            readme.contains(example.trim()),
            "README's gateway section shows config/gateway.toml as it is"
        );
    }

    #[test]
    fn bad_configuration_is_refused_naming_the_field() {
        let cases = [
            (MINIMAL.replace("seed = 7", ""), "seed"),
            (MINIMAL.replace("seed = 7", "seed = -1"), "seed"),
            (
                MINIMAL.replace("success_rate = 0.5", "success_rate = 1.5"),
                "providers.acme.success_rate",
            ),
            (
                MINIMAL.replace("success_rate = 0.5", ""),
                "providers.acme.success_rate",
            ),
            (
                MINIMAL.replace("retryable = true", ""),
                "providers.acme.declines[0].retryable",
            ),
            (
                MINIMAL.replace("\"insufficient_funds\"", "\"Insufficient Funds\""),
                "providers.acme.declines[0].code",
            ),
            (
                MINIMAL.replace("retryable = true", "retryable = true\nweight = 0"),
                "providers.acme.declines[0].weight",
            ),
            (
                format!("{MINIMAL}[[providers.acme.declines]]\ncode = \"insufficient_funds\"\nretryable = false\n"),
                "providers.acme.declines[1].code",
            ),
            (
                "seed = 1\n[providers.acme]\nsuccess_rate = 0.9\n".to_string(),
                "providers.acme.declines",
            ),
            (
                MINIMAL.replace("providers.acme", "providers.acme_pay"),
                "providers.acme_pay",
            ),
            (
                MINIMAL.replace(
                    "success_rate = 0.5",
                    "success_rate = 0.5\nlatency = \"fast\"",
                ),
                "providers.acme.latency",
            ),
            (
                MINIMAL.replace(
                    "success_rate = 0.5",
                    "success_rate = 0.5\nlatency = \"50s\"\nlatency_jitter = \"20s\"",
                ),
                "providers.acme.latency_jitter",
            ),
            (
                MINIMAL.replace(
                    "success_rate = 0.5",
                    "success_rate = 0.5\nduplicate_rate = -0.1",
                ),
                "providers.acme.duplicate_rate",
            ),
            (
                MINIMAL.replace(
                    "success_rate = 0.5",
                    "success_rate = 0.5\nout_of_order_delay = \"1h\"",
                ),
                "providers.acme.out_of_order_delay",
            ),
            (
                MINIMAL.replace("seed = 7", "seed = 7\ndefault_provider = \"other\""),
                "default_provider",
            ),
            (
                MINIMAL.replace("seed = 7", "seed = 7\ngroup_id = \"a b\""),
                "group_id",
            ),
            ("seed = 7\n".to_string(), "providers"),
        ];
        for (text, field) in cases {
            let err = GatewayConfig::parse(&text).unwrap_err();
            match &err {
                GatewayConfigError::Invalid { field: f, .. } => {
                    assert_eq!(f, field, "{text}\n→ {err}")
                }
                other => panic!("{text}\n→ {other}, expected an error naming {field}"),
            }
        }
        // An unknown (misspelt) field is named by the TOML reader.
        let err = GatewayConfig::parse(&MINIMAL.replace("success_rate", "sucess_rate"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sucess_rate"), "{err}");
    }
}

//! What a provider answers to one charge, decided as a pure function of
//! the seed, the provider's settings and the charge (its `charge_id` and
//! attempt; its token and instant for an expiring token). No state, no
//! clock, no randomness outside the seed: a request seen again, after a
//! redelivery or a restart, is answered exactly as before, so the
//! emulator is idempotent by `charge_id` without remembering anything.
//!
//! Token references name their provider: `tok_<provider>_<rest>`, where
//! `<provider>` is a configured provider (a-z, 0-9, '-') and `<rest>` is
//! anything non-empty. A segment `exp<YYYYMM>` of `<rest>` (segments are
//! separated by '_') makes the token expire after that month (UTC): a
//! charge asked for later is declined with the provider's
//! `expired_token_code`, not retryable. Example: `tok_acme_exp202604_c42`.

use std::time::Duration;

use chrono::{Datelike, NaiveDate};

use super::config::{GatewayConfig, ProviderConfig};
use super::request::ChargeRequest;
use crate::engine::time::Timestamp;

/// A charge's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    Declined { code: String, retryable: bool },
}

/// The result and when and how it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// From request to result; the result is dated request + latency and
    /// published this long after the request is read.
    pub latency: Duration,
    /// Published a second time (the same bytes) this long after the first.
    pub duplicate_after: Option<Duration>,
    /// Held back this much longer than its latency, so results of later
    /// requests overtake it.
    pub held_back: Option<Duration>,
}

/// A token reference taken apart by the naming convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRef<'a> {
    /// The `<provider>` of `tok_<provider>_…` (`None`: not of that form).
    pub provider: Option<&'a str>,
    /// The first instant the token is no longer valid (`exp<YYYYMM>`).
    pub expired_from: Option<Timestamp>,
}

impl<'a> TokenRef<'a> {
    pub fn parse(token: &'a str) -> TokenRef<'a> {
        let Some((provider, rest)) = token
            .strip_prefix("tok_")
            .and_then(|t| t.split_once('_'))
            .filter(|(p, rest)| !p.is_empty() && !rest.is_empty())
        else {
            return TokenRef {
                provider: None,
                expired_from: None,
            };
        };
        let expired_from = rest.split('_').find_map(expiry_segment);
        TokenRef {
            provider: Some(provider),
            expired_from,
        }
    }
}

/// `exp<YYYYMM>` → the first instant of the month after.
fn expiry_segment(segment: &str) -> Option<Timestamp> {
    let digits = segment.strip_prefix("exp")?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = digits[..4].parse().ok()?;
    let month: u32 = digits[4..].parse().ok()?;
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)?
    };
    Some(Timestamp::from_datetime(
        next.and_hms_opt(0, 0, 0)?.and_utc(),
    ))
}

/// The provider that answers `token`: the one it names, else the default
/// provider; `Err` with the reason when there is none.
pub fn provider_of<'c>(
    config: &'c GatewayConfig,
    token: &str,
) -> Result<(&'c str, &'c ProviderConfig), String> {
    let named = TokenRef::parse(token).provider;
    let name = match named {
        Some(name) => name,
        None => match &config.default_provider {
            Some(name) => name.as_str(),
            None => {
                return Err(
                    "the token reference names no provider (tok_<provider>_…) and no default_provider is configured"
                        .into(),
                )
            }
        },
    };
    config
        .providers
        .get_key_value(name)
        .map(|(n, p)| (n.as_str(), p))
        .ok_or_else(|| {
            let known: Vec<&str> = config.providers.keys().map(String::as_str).collect();
            format!(
                "provider {name:?} of the token reference is not configured (configured: {})",
                known.join(", ")
            )
        })
}

/// A 64-bit draw for one purpose of one charge.
fn draw(seed: u64, provider: &str, charge: &ChargeRequest, purpose: &str) -> u64 {
    let key = format!(
        "{provider}\u{0}{}\u{0}{}\u{0}{purpose}",
        charge.charge_id, charge.attempt
    );
    xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), seed)
}

/// A draw as a number in [0, 1).
fn unit(seed: u64, provider: &str, charge: &ChargeRequest, purpose: &str) -> f64 {
    (draw(seed, provider, charge, purpose) >> 11) as f64 / (1u64 << 53) as f64
}

/// What `provider` (named `name`) answers to `charge`.
pub fn decide(seed: u64, name: &str, provider: &ProviderConfig, charge: &ChargeRequest) -> Outcome {
    let u = |purpose: &str| unit(seed, name, charge, purpose);
    let expired = TokenRef::parse(&charge.token_ref)
        .expired_from
        .is_some_and(|from| charge.occurred_at >= from);
    let verdict = if expired {
        Verdict::Declined {
            code: provider.expired_token_code.clone(),
            retryable: false,
        }
    } else if u("verdict") < provider.success_rate {
        Verdict::Succeeded
    } else {
        let total: u64 = provider.declines.iter().map(|d| u64::from(d.weight)).sum();
        let mut pick = draw(seed, name, charge, "decline") % total.max(1);
        let decline = provider
            .declines
            .iter()
            .find(|d| {
                let w = u64::from(d.weight);
                if pick < w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .expect("validated: a provider that declines has decline codes");
        Verdict::Declined {
            code: decline.code.clone(),
            retryable: decline.retryable,
        }
    };
    let jitter = provider.latency_jitter.as_micros() as u64;
    let latency = provider.latency
        + Duration::from_micros(draw(seed, name, charge, "latency") % (jitter + 1));
    Outcome {
        verdict,
        latency,
        duplicate_after: (u("duplicate") < provider.duplicate_rate)
            .then_some(provider.duplicate_delay),
        held_back: (u("out_of_order") < provider.out_of_order_rate)
            .then_some(provider.out_of_order_delay),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::str::FromStr;

    use rust_decimal::Decimal;

    use super::*;
    use crate::gateway::config::GatewayConfig;

    const CONFIG: &str = r#"
seed = 42
[providers.acme]
success_rate = 0.8
latency = "100ms"
latency_jitter = "400ms"
duplicate_rate = 0.1
duplicate_delay = "2s"
out_of_order_rate = 0.05
out_of_order_delay = "3s"
[[providers.acme.declines]]
code = "insufficient_funds"
retryable = true
weight = 3
[[providers.acme.declines]]
code = "do_not_honor"
retryable = true
weight = 1
[[providers.acme.declines]]
code = "card_stolen"
retryable = false
weight = 1

[providers.strict]
success_rate = 0.0
[[providers.strict.declines]]
code = "card_stolen"
retryable = false
"#;

    fn config() -> GatewayConfig {
        GatewayConfig::parse(CONFIG).unwrap()
    }

    fn charge(account: &str, attempt: u32, token: &str) -> ChargeRequest {
        let invoice_id = format!("inv_{account}_00001");
        ChargeRequest {
            event_id: format!("e-{account}-{attempt}"),
            account_id: account.into(),
            occurred_at: Timestamp::parse_rfc3339("2026-03-01T01:00:00Z").unwrap(),
            charge_id: format!("{invoice_id}/attempt-{attempt}"),
            invoice_id,
            amount: Decimal::from_str("33.00").unwrap(),
            currency: "EUR".into(),
            token_ref: token.into(),
            attempt,
        }
    }

    fn acme(c: &GatewayConfig, ch: &ChargeRequest) -> Outcome {
        decide(c.seed, "acme", &c.providers["acme"], ch)
    }

    #[test]
    fn the_same_charge_always_gets_the_same_outcome() {
        let c = config();
        for i in 0..500 {
            let ch = charge(&format!("acct-{i}"), 1 + i % 4, "tok_acme_x");
            // Another config value built from the same text: nothing
            // outside (seed, provider settings, charge) is an input.
            assert_eq!(acme(&c, &ch), acme(&config(), &ch.clone()));
        }
    }

    #[test]
    fn outcomes_depend_on_the_seed_the_charge_and_the_attempt() {
        let c = config();
        let outcomes = |seed: u64, attempt: u32| -> Vec<Outcome> {
            (0..200)
                .map(|i| {
                    decide(
                        seed,
                        "acme",
                        &c.providers["acme"],
                        &charge(&format!("acct-{i}"), attempt, "tok_acme_x"),
                    )
                })
                .collect()
        };
        assert_ne!(outcomes(42, 1), outcomes(43, 1), "the seed matters");
        assert_ne!(outcomes(42, 1), outcomes(42, 2), "the attempt matters");
    }

    #[test]
    fn rates_hold_within_tolerance_over_many_charges() {
        let c = config();
        let n = 20_000;
        let mut succeeded = 0;
        let mut codes: BTreeMap<String, usize> = BTreeMap::new();
        let (mut duplicated, mut held) = (0, 0);
        let (mut min, mut max) = (Duration::MAX, Duration::ZERO);
        for i in 0..n {
            let o = acme(&c, &charge(&format!("acct-{i}"), 1, "tok_acme_x"));
            match o.verdict {
                Verdict::Succeeded => succeeded += 1,
                Verdict::Declined { code, .. } => *codes.entry(code).or_default() += 1,
            }
            duplicated += usize::from(o.duplicate_after == Some(Duration::from_secs(2)));
            held += usize::from(o.held_back == Some(Duration::from_secs(3)));
            min = min.min(o.latency);
            max = max.max(o.latency);
        }
        let share = |k: usize| k as f64 / n as f64;
        let near = |got: f64, want: f64| (got - want).abs() < 0.015;
        assert!(near(share(succeeded), 0.8), "success {}", share(succeeded));
        // Declines by weight 3:1:1 of the 20% that fail.
        assert!(near(share(codes["insufficient_funds"]), 0.12), "{codes:?}");
        assert!(near(share(codes["do_not_honor"]), 0.04), "{codes:?}");
        assert!(near(share(codes["card_stolen"]), 0.04), "{codes:?}");
        assert!(
            near(share(duplicated), 0.1),
            "duplicates {}",
            share(duplicated)
        );
        assert!(near(share(held), 0.05), "held back {}", share(held));
        assert!(min >= Duration::from_millis(100) && max <= Duration::from_millis(500));
        assert!(max - min > Duration::from_millis(300), "latency is spread");
    }

    #[test]
    fn declines_carry_their_codes_retryability() {
        let c = config();
        let mut seen = BTreeMap::new();
        for i in 0..2_000 {
            for (name, token) in [("acme", "tok_acme_x"), ("strict", "tok_strict_x")] {
                let o = decide(
                    c.seed,
                    name,
                    &c.providers[name],
                    &charge(&format!("acct-{i}"), 1, token),
                );
                if let Verdict::Declined { code, retryable } = o.verdict {
                    seen.insert((name, code), retryable);
                }
            }
        }
        assert!(seen[&("acme", "insufficient_funds".to_string())]);
        assert!(seen[&("acme", "do_not_honor".to_string())]);
        assert!(!seen[&("acme", "card_stolen".to_string())]);
        // A provider that never succeeds declines every charge, not retryable.
        assert_eq!(seen.keys().filter(|(n, _)| *n == "strict").count(), 1);
        assert!(!seen[&("strict", "card_stolen".to_string())]);
    }

    #[test]
    fn a_token_expires_after_its_month() {
        let c = config();
        let mut ch = charge("acct-1", 1, "tok_acme_exp202602_c1");
        // Asked on 1 March: February's token has expired, whatever the draw.
        for attempt in 1..50 {
            ch.attempt = attempt;
            ch.charge_id = format!("{}/attempt-{attempt}", ch.invoice_id);
            assert_eq!(
                acme(&c, &ch).verdict,
                Verdict::Declined {
                    code: "expired_card".into(),
                    retryable: false
                }
            );
        }
        // Asked in its last month, the token is still good.
        let still_good = (1..200).any(|i| {
            let mut ch = charge(&format!("acct-{i}"), 1, "tok_acme_exp202603_c1");
            ch.occurred_at = Timestamp::parse_rfc3339("2026-03-31T23:59:59Z").unwrap();
            acme(&c, &ch).verdict == Verdict::Succeeded
        });
        assert!(still_good);
        assert_eq!(
            TokenRef::parse("tok_acme_exp202612_x").expired_from,
            Timestamp::parse_rfc3339("2027-01-01T00:00:00Z")
        );
        assert_eq!(TokenRef::parse("tok_acme_exp202613_x").expired_from, None);
    }

    #[test]
    fn the_token_names_the_provider() {
        let mut c = config();
        assert_eq!(TokenRef::parse("tok_acme_123").provider, Some("acme"));
        assert_eq!(TokenRef::parse("tok_acme-eu_a_b").provider, Some("acme-eu"));
        for no_provider in ["psp:tok_1", "tok_acme", "tok__x", "tok_acme_", "acme"] {
            assert_eq!(TokenRef::parse(no_provider).provider, None, "{no_provider}");
        }
        assert_eq!(provider_of(&c, "tok_strict_9").unwrap().0, "strict");
        let err = provider_of(&c, "tok_other_9").unwrap_err();
        assert!(
            err.contains("\"other\"") && err.contains("acme, strict"),
            "{err}"
        );
        assert!(provider_of(&c, "psp:tok_1").is_err());
        c.default_provider = Some("acme".into());
        assert_eq!(provider_of(&c, "psp:tok_1").unwrap().0, "acme");
        assert!(
            provider_of(&c, "tok_other_9").is_err(),
            "a named provider must exist"
        );
    }
}

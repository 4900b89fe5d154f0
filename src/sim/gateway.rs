//! The demo's payment gateway: the `billstream gateway` emulator's own
//! outcome function (`gateway::decide`) answering the demo's charge
//! requests in process, instead of a stub of its own. Each request takes
//! the emulator's path: the `ChargeRequested` output is encoded as it would
//! be on `billing.charges.v1`, decoded by `gateway::request::decode_request`,
//! given to the provider its token reference names, decided, and turned into
//! the `PaymentSucceeded` / `PaymentFailed` input the emulator would publish
//! (dated request + latency, the same event id for every answer of a
//! charge). Deliberate duplicates and held-back results are delivered as the
//! emulator would publish them; what it did is counted for the summary.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::contracts::{Catalog, OutputRecord};
use crate::engine::events::{Input, PaymentKind};
use crate::gateway::request::{decode_request, result_event, Rejected};
use crate::gateway::{decide, provider_of, GatewayConfig, Verdict};

/// The demo's gateway configuration (`config/demo-gateway.toml`): two card
/// providers named by the demo's token references, `acme` and `riskpay`.
pub const DEMO_GATEWAY: &str = include_str!("../../config/demo-gateway.toml");

/// What one provider did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderCounts {
    pub requests: u64,
    pub succeeded: u64,
    /// Declines by code, with whether the code is retryable.
    pub declined: BTreeMap<(String, bool), u64>,
    pub duplicated: u64,
    pub held_back: u64,
}

/// A charge declined retryably and paid on a later attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryExample {
    pub account_id: String,
    pub invoice_id: String,
    pub declined: String,
    pub paid_on_attempt: u32,
    pub amount: String,
    pub currency: String,
}

/// What the demo's gateway did, for the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayReport {
    pub seed: u64,
    pub providers: BTreeMap<String, ProviderCounts>,
    /// Requests the emulator would dead-letter, by kind.
    pub rejected: BTreeMap<&'static str, u64>,
    pub retry_example: Option<RetryExample>,
}

/// One result to deliver: the input, and how long after the request is
/// read it is delivered (its latency, plus a hold-back).
#[derive(Debug)]
pub struct Delivery {
    pub input: Input,
    pub after: Duration,
}

pub struct DemoGateway {
    config: GatewayConfig,
    catalog: &'static Catalog,
    environment: String,
    /// Invoices whose last answer was a retryable decline → its code.
    declined: BTreeMap<String, String>,
    pub report: GatewayReport,
}

impl DemoGateway {
    pub fn new(config: GatewayConfig, environment: &str) -> anyhow::Result<DemoGateway> {
        Ok(DemoGateway {
            report: GatewayReport {
                seed: config.seed,
                ..Default::default()
            },
            config,
            catalog: Catalog::shared()?,
            environment: environment.to_string(),
            declined: BTreeMap::new(),
        })
    }

    /// Answer one `ChargeRequested` output as the emulator would: the
    /// results to deliver (a second, byte-identical one for a deliberate
    /// duplicate), or the dead-letter kind and reason of a request the
    /// emulator cannot answer.
    pub fn answer(&mut self, charge: &OutputRecord) -> Result<Vec<Delivery>, Rejected> {
        let answered = self.decide(charge);
        if let Err(r) = &answered {
            *self.report.rejected.entry(r.kind).or_default() += 1;
        }
        answered
    }

    fn decide(&mut self, charge: &OutputRecord) -> Result<Vec<Delivery>, Rejected> {
        let bytes = self
            .catalog
            .encode_output(charge)
            .map_err(|e| Rejected::new("invalid_field", format!("not encodable: {e}")))?;
        let request = decode_request(self.catalog, Some(charge.key.as_bytes()), &bytes)?;
        let (name, provider) = provider_of(&self.config, &request.token_ref)
            .map_err(|reason| Rejected::new("unknown_provider", reason))?;
        let outcome = decide(self.config.seed, name, provider, &request);
        let counts = self.report.providers.entry(name.to_string()).or_default();
        counts.requests += 1;
        match &outcome.verdict {
            Verdict::Succeeded => {
                counts.succeeded += 1;
                if let Some(code) = self.declined.remove(&request.invoice_id) {
                    self.report.retry_example.get_or_insert(RetryExample {
                        account_id: request.account_id.clone(),
                        invoice_id: request.invoice_id.clone(),
                        declined: code,
                        paid_on_attempt: request.attempt,
                        amount: request.amount.to_string(),
                        currency: request.currency.clone(),
                    });
                }
            }
            Verdict::Declined { code, retryable } => {
                *counts
                    .declined
                    .entry((code.clone(), *retryable))
                    .or_default() += 1;
                if *retryable {
                    self.declined
                        .insert(request.invoice_id.clone(), code.clone());
                } else {
                    self.declined.remove(&request.invoice_id);
                }
            }
        }
        let input = result_event(&request, &outcome, &self.environment);
        let first = outcome.latency + outcome.held_back.unwrap_or_default();
        counts.held_back += u64::from(outcome.held_back.is_some());
        let mut out = vec![Delivery {
            input: input.clone(),
            after: first,
        }];
        if let Some(delay) = outcome.duplicate_after {
            counts.duplicated += 1;
            out.push(Delivery {
                input,
                after: first + delay,
            });
        }
        Ok(out)
    }
}

/// Whether `input` is a non-retryable decline (the customer replaces the card).
pub fn is_final_decline(input: &Input) -> bool {
    matches!(
        input,
        Input::Payment(p) if matches!(p.kind, PaymentKind::PaymentFailed { retryable: false, .. })
    )
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use rust_decimal::Decimal;
    use serde_json::json;

    use super::*;
    use crate::contracts::OutputTopic;
    use crate::engine::time::Timestamp;
    use crate::gateway::{ChargeRequest, TokenRef};

    /// A `ChargeRequested` output as the engine publishes it.
    fn charge_record(n: u32, attempt: u32, token: &str) -> OutputRecord {
        let account = format!("acct-{n:05}");
        let invoice = format!("inv_{account}_00001");
        OutputRecord {
            topic: OutputTopic::Charges,
            key: account.clone(),
            event_id: format!("e-{n}-{attempt}"),
            causation_id: "timer:x".into(),
            kind: "ChargeRequested",
            json: json!({"event_id": format!("e-{n}-{attempt}"), "causation_id": "timer:x",
                "account_id": account, "occurred_at": "2026-03-01T01:00:00Z",
                "charge_id": format!("{invoice}/attempt-{attempt}"), "invoice_id": invoice,
                "amount": "33.00", "currency": "EUR", "token_ref": token, "attempt": attempt}),
            traceparent: None,
        }
    }

    fn request(n: u32, attempt: u32, token: &str) -> ChargeRequest {
        let account = format!("acct-{n:05}");
        let invoice_id = format!("inv_{account}_00001");
        ChargeRequest {
            event_id: format!("e-{n}-{attempt}"),
            account_id: account,
            occurred_at: Timestamp::parse_rfc3339("2026-03-01T01:00:00Z").unwrap(),
            charge_id: format!("{invoice_id}/attempt-{attempt}"),
            invoice_id,
            amount: Decimal::from_str("33.00").unwrap(),
            currency: "EUR".into(),
            token_ref: token.into(),
            attempt,
        }
    }

    #[test]
    fn issue_14_demo_charges_are_answered_by_the_emulators_outcome_function() {
        let config = GatewayConfig::parse(DEMO_GATEWAY).unwrap();
        let mut g = DemoGateway::new(config.clone(), "prod").unwrap();
        let (mut succeeded, mut declined, mut twice) = (0, 0, 0);
        for n in 0..400 {
            let token = if n % 2 == 0 {
                "tok_acme_c1n1"
            } else {
                "tok_riskpay_c2n1"
            };
            let attempt = 1 + n % 3;
            let got = g.answer(&charge_record(n, attempt, token)).unwrap();
            // What `billstream gateway` answers to the same request.
            let req = request(n, attempt, token);
            let (name, provider) = provider_of(&config, token).unwrap();
            let outcome = decide(config.seed, name, provider, &req);
            let expected = result_event(&req, &outcome, "prod");
            let first = outcome.latency + outcome.held_back.unwrap_or_default();
            assert_eq!(got[0].input, expected);
            assert_eq!(got[0].after, first);
            match outcome.duplicate_after {
                Some(delay) => {
                    twice += 1;
                    assert_eq!(got.len(), 2);
                    assert_eq!(got[1].input, expected, "a duplicate is the same result");
                    assert_eq!(got[1].after, first + delay);
                }
                None => assert_eq!(got.len(), 1),
            }
            match outcome.verdict {
                Verdict::Succeeded => succeeded += 1,
                Verdict::Declined { .. } => declined += 1,
            }
            // Asked again (a redelivery), the same answer.
            let again = g.answer(&charge_record(n, attempt, token)).unwrap();
            assert_eq!(again[0].input, expected);
        }
        assert!(succeeded > 0 && declined > 0 && twice > 0);
        let counted =
            |f: fn(&ProviderCounts) -> u64| -> u64 { g.report.providers.values().map(f).sum() };
        assert_eq!(counted(|p| p.requests), 800);
        assert_eq!(counted(|p| p.succeeded), 2 * succeeded);
        assert_eq!(counted(|p| p.declined.values().sum()), 2 * declined);
        assert_eq!(counted(|p| p.duplicated), 2 * twice);
    }

    #[test]
    fn issue_14_demo_gateway_reports_a_retry_and_counts_what_it_cannot_answer() {
        let config = GatewayConfig::parse(DEMO_GATEWAY).unwrap();
        let mut g = DemoGateway::new(config.clone(), "prod").unwrap();
        let err = g.answer(&charge_record(1, 1, "psp:tok_1")).unwrap_err();
        assert_eq!(err.kind, "unknown_provider");
        assert_eq!(g.report.rejected["unknown_provider"], 1);
        // An invoice declined retryably, then paid on the retry: the
        // report's example names the decline and the attempt that paid.
        let token = "tok_riskpay_c9n1";
        let (name, provider) = provider_of(&config, token).unwrap();
        let verdict =
            |n: u32, a: u32| decide(config.seed, name, provider, &request(n, a, token)).verdict;
        let n = (0..1000)
            .find(|n| {
                matches!(
                    verdict(*n, 1),
                    Verdict::Declined {
                        retryable: true,
                        ..
                    }
                ) && verdict(*n, 2) == Verdict::Succeeded
            })
            .unwrap();
        let Verdict::Declined { code, .. } = verdict(n, 1) else {
            unreachable!()
        };
        for attempt in 1..=2 {
            g.answer(&charge_record(n, attempt, token)).unwrap();
        }
        assert_eq!(
            g.report.retry_example,
            Some(RetryExample {
                account_id: format!("acct-{n:05}"),
                invoice_id: format!("inv_acct-{n:05}_00001"),
                declined: code,
                paid_on_attempt: 2,
                amount: "33.00".into(),
                currency: "EUR".into(),
            })
        );
    }

    #[test]
    fn the_demo_gateway_config_is_valid_and_names_the_demo_providers() {
        let c = GatewayConfig::parse(DEMO_GATEWAY).unwrap();
        for name in ["acme", "riskpay"] {
            let p = &c.providers[name];
            assert!(p.success_rate < 1.0, "{name} declines some charges");
            assert!(
                p.declines.iter().any(|d| d.retryable),
                "{name} has a retryable decline, so dunning retries"
            );
        }
        assert_eq!(TokenRef::parse("tok_acme_c000001n1").provider, Some("acme"));
        assert_eq!(
            TokenRef::parse("tok_riskpay_exp202602_c000001n1").provider,
            Some("riskpay")
        );
        assert!(TokenRef::parse("tok_riskpay_exp202602_c000001n1")
            .expired_from
            .is_some());
    }
}

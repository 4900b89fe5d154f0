//! Who may read: a bearer JWT (HS256 or RS256, as configured) whose role
//! claim contains `billing:read`. No valid token → 401, a valid token
//! without the role → 403. The key is loaded once, at start-up, and a
//! missing or unreadable one stops the start naming its config field.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};

use crate::config::{ApiSettings, ConfigError, JwtKey};

/// The role every API route needs.
pub const READ_ROLE: &str = "billing:read";

/// Verifies bearer tokens against the configured key and claims.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    /// Path of the role claim, split on `.` (`realm_access.roles`).
    role_claim: Vec<String>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No usable bearer token: 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token without the `billing:read` role: 403.
    #[error("the token does not grant the {READ_ROLE} role (claim `{0}`)")]
    Forbidden(String),
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            AuthError::Unauthenticated(_) => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                super::routes::error_body(&message),
            )
                .into_response(),
            AuthError::Forbidden(_) => {
                (StatusCode::FORBIDDEN, super::routes::error_body(&message)).into_response()
            }
        }
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

impl Verifier {
    /// The verifier of `[api]`; fails naming the field when the key is
    /// missing or unreadable.
    pub fn from_settings(api: &ApiSettings) -> Result<Verifier, ConfigError> {
        let (key, algorithm) = match &api.jwt.key {
            JwtKey::Hs256 { secret } => {
                if secret.is_empty() {
                    return Err(invalid(
                        "api.jwt.secret",
                        "must be set to serve the API with HS256 (e.g. BILLSTREAM__API__JWT__SECRET)",
                    ));
                }
                (
                    DecodingKey::from_secret(secret.as_bytes()),
                    Algorithm::HS256,
                )
            }
            JwtKey::Rs256 { public_key_path } => {
                let field = "api.jwt.public_key_path";
                if public_key_path.as_os_str().is_empty() {
                    return Err(invalid(
                        field,
                        "must name a PEM file to serve the API with RS256",
                    ));
                }
                let pem = std::fs::read(public_key_path).map_err(|e| {
                    invalid(
                        field,
                        format!("cannot read {}: {e}", public_key_path.display()),
                    )
                })?;
                let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                    invalid(
                        field,
                        format!(
                            "{} is not an RSA public key in PEM: {e}",
                            public_key_path.display()
                        ),
                    )
                })?;
                (key, Algorithm::RS256)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        match &api.jwt.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &api.jwt.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        Ok(Verifier {
            key,
            validation,
            role_claim: api.role_claim.split('.').map(str::to_string).collect(),
        })
    }

    /// Check the `Authorization` header value of a request.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), AuthError> {
        let unauth = |m: &str| AuthError::Unauthenticated(m.to_string());
        let value = authorization.ok_or_else(|| unauth("missing bearer token"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauth("the Authorization header is not `Bearer <token>`"))?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| {
            // The reason is logged, not returned: a client learns only
            // that its token was refused.
            tracing::debug!(error = %e, "bearer token refused");
            unauth("invalid or expired bearer token")
        })?;
        let mut claim = data.claims.get(&self.role_claim[0]);
        for key in &self.role_claim[1..] {
            claim = claim.and_then(|c| c.get(key));
        }
        let granted = match claim {
            Some(Value::Array(roles)) => roles.iter().any(|r| r.as_str() == Some(READ_ROLE)),
            Some(Value::String(roles)) => roles.split_whitespace().any(|r| r == READ_ROLE),
            _ => false,
        };
        if granted {
            Ok(())
        } else {
            Err(AuthError::Forbidden(self.role_claim.join(".")))
        }
    }
}

/// A development token for `api` (`billstream token`, and the one the
/// demo prints): HS256 with `api.jwt.secret`, the `billing:read` role in
/// `api.role_claim` (a dotted path nests), `sub`, `iat`, `exp` after
/// `valid_secs`, and `iss`/`aud` when the settings require them. With
/// RS256 billstream holds only the public key: the identity provider
/// issues the tokens, and this refuses naming the field.
pub fn dev_token(api: &ApiSettings, subject: &str, valid_secs: u64) -> Result<String, ConfigError> {
    let secret = match &api.jwt.key {
        JwtKey::Hs256 { secret } if secret.is_empty() => {
            return Err(invalid(
                "api.jwt.secret",
                "must be set to sign a token (e.g. BILLSTREAM__API__JWT__SECRET)",
            ))
        }
        JwtKey::Hs256 { secret } => secret,
        JwtKey::Rs256 { .. } => {
            return Err(invalid(
                "api.jwt.algorithm",
                "is RS256: billstream has only the public key (api.jwt.public_key_path), so tokens come from your identity provider",
            ))
        }
    };
    let now = chrono::Utc::now().timestamp();
    let exp = i64::try_from(valid_secs)
        .ok()
        .and_then(|v| now.checked_add(v))
        .ok_or_else(|| invalid("api.jwt", "the token's lifetime is out of range"))?;
    let mut claims = json!({"sub": subject, "iat": now, "exp": exp});
    if let Some(iss) = &api.jwt.issuer {
        claims["iss"] = json!(iss);
    }
    if let Some(aud) = &api.jwt.audience {
        claims["aud"] = json!(aud);
    }
    // `realm_access.roles` → {"realm_access": {"roles": [...]}}.
    let path: Vec<&str> = api.role_claim.split('.').collect();
    let mut roles = json!([READ_ROLE]);
    for key in path[1..].iter().rev() {
        let mut inner = Map::new();
        inner.insert(key.to_string(), roles);
        roles = Value::Object(inner);
    }
    claims[path[0]] = roles;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| invalid("api.jwt.secret", format!("cannot sign a token: {e}")))
}

/// The middleware in front of every route but `/healthz`.
pub async fn require_reader(
    State(verifier): State<Arc<Verifier>>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match verifier.check(authorization) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            // The path holds an account id: opaque, but never logged as a
            // card number (SPEC §4).
            tracing::info!(
                path = %crate::contracts::redact::redact_text(request.uri().path()),
                refused = %e,
                "API request refused"
            );
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn api(vars: &[(&str, &str)]) -> ApiSettings {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::from_layers(None, vars).unwrap().api
    }

    const SECRET: (&str, &str) = (
        "BILLSTREAM__API__JWT__SECRET",
        "a-dev-secret-of-at-least-32-bytes-long",
    );

    #[test]
    fn a_dev_token_passes_the_verifier_of_the_same_settings_nested_role_claim_iss_and_aud() {
        for settings in [
            api(&[SECRET]),
            api(&[
                SECRET,
                ("BILLSTREAM__API__ROLE_CLAIM", "realm_access.roles"),
                ("BILLSTREAM__API__JWT__ISSUER", "https://idp.example"),
                ("BILLSTREAM__API__JWT__AUDIENCE", "billstream"),
            ]),
        ] {
            let token = dev_token(&settings, "support-1", 600).unwrap();
            let verifier = Verifier::from_settings(&settings).unwrap();
            assert_eq!(verifier.check(Some(&format!("Bearer {token}"))), Ok(()));
        }
        // Another secret's verifier refuses it.
        let token = dev_token(&api(&[SECRET]), "support-1", 600).unwrap();
        let other = api(&[(
            "BILLSTREAM__API__JWT__SECRET",
            "another-secret-of-at-least-32-bytes-long",
        )]);
        assert!(Verifier::from_settings(&other)
            .unwrap()
            .check(Some(&format!("Bearer {token}")))
            .is_err());
    }

    #[test]
    fn a_dev_token_needs_an_hs256_secret_and_says_which_field() {
        let e = dev_token(&api(&[]), "s", 600).unwrap_err().to_string();
        assert!(e.contains("api.jwt.secret"), "{e}");
        let rs = api(&[
            ("BILLSTREAM__API__JWT__ALGORITHM", "RS256"),
            ("BILLSTREAM__API__JWT__PUBLIC_KEY_PATH", "/nowhere.pem"),
        ]);
        let e = dev_token(&rs, "s", 600).unwrap_err().to_string();
        assert!(
            e.contains("api.jwt.algorithm") && e.contains("identity provider"),
            "{e}"
        );
    }
}

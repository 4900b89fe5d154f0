//! Who may read: a bearer JWT (HS256 or RS256, as configured) whose role
//! claim contains `billing:read`. No valid token → 401, a valid token
//! without the role → 403. The key is loaded once, at start-up, and a
//! missing or unreadable one stops the start naming its config field.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

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

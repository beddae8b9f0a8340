//! The pure half of ServiceAccount authentication: reading a token's claims to refuse what is
//! plainly not acceptable (malformed, expired, another audience, not a ServiceAccount) before
//! the API server is asked, reading the API server's TokenReview answer, and mapping an
//! identity to grants through the rules. No reason ever quotes the token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use confman_contract::ServiceAccountRule;
use serde::Deserialize;

use super::{Grant, Principal};

/// The prefix of a ServiceAccount's user name.
const SA_PREFIX: &str = "system:serviceaccount:";

/// A ServiceAccount, as a verified token names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountId {
    /// Kubernetes namespace.
    pub namespace: String,
    /// ServiceAccount name.
    pub name: String,
}

impl ServiceAccountId {
    /// Parses `system:serviceaccount:<namespace>:<name>`.
    pub fn from_username(username: &str) -> Option<ServiceAccountId> {
        let (namespace, name) = username.strip_prefix(SA_PREFIX)?.split_once(':')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains(':'))
            .then(|| ServiceAccountId { namespace: namespace.into(), name: name.into() })
    }

    /// `system:serviceaccount:<namespace>:<name>`: the actor in audit records.
    pub fn username(&self) -> String {
        format!("{SA_PREFIX}{}:{}", self.namespace, self.name)
    }
}

/// Whether a bearer credential has the shape of a JWT (three base64url segments): only those
/// are taken for ServiceAccount tokens; anything else is an API key that did not match.
pub fn looks_like_jwt(token: &str) -> bool {
    let segments: Vec<&str> = token.split('.').collect();
    segments.len() == 3
        && segments.iter().all(|s| {
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

/// Checks the claims a token states (its signature is the API server's to check): what fails
/// here is refused with its reason, without a TokenReview. Returns the ServiceAccount it
/// claims to be and when it expires (Unix seconds).
pub fn check_claims(token: &str, audiences: &[String], now: i64) -> Result<(ServiceAccountId, Option<i64>), String> {
    let malformed = |why: &str| format!("the bearer token is not a well-formed ServiceAccount token: {why}");
    let payload = token.split('.').nth(1).ok_or_else(|| malformed("it has no payload segment"))?;
    let bytes =
        URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).map_err(|_| malformed("the payload is not base64url"))?;
    let claims: Claims = serde_json::from_slice(&bytes)
        .map_err(|e| malformed(&format!("the payload is not a JSON claims set ({e})")))?;
    let sub = claims.sub.ok_or_else(|| malformed("it has no subject (sub)"))?;
    let id = ServiceAccountId::from_username(&sub).ok_or_else(|| {
        format!("the token's subject {sub:?} is not a ServiceAccount ({SA_PREFIX}<namespace>:<name>)")
    })?;
    if let Some(exp) = claims.exp
        && exp <= now
    {
        return Err(format!("the ServiceAccount token of {} expired {} s ago", id.username(), now - exp));
    }
    if let Some(nbf) = claims.nbf
        && nbf > now
    {
        return Err(format!("the ServiceAccount token of {} is not valid for another {} s", id.username(), nbf - now));
    }
    let token_audiences = match claims.aud {
        Some(Audience::One(a)) => vec![a],
        Some(Audience::Many(a)) => a,
        None => Vec::new(),
    };
    if !token_audiences.iter().any(|a| audiences.contains(a)) {
        return Err(format!(
            "the ServiceAccount token of {} is for audiences {token_audiences:?}, none of which this cluster \
             accepts ({audiences:?}); project a token with one of them",
            id.username()
        ));
    }
    Ok((id, claims.exp))
}

/// The parts of a TokenReview answer that decide.
#[derive(Debug, Default, Deserialize)]
pub struct TokenReviewStatus {
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    user: Option<ReviewedUser>,
    #[serde(default)]
    audiences: Option<Vec<String>>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ReviewedUser {
    #[serde(default)]
    username: String,
}

/// A TokenReview as the API server returns it.
#[derive(Debug, Default, Deserialize)]
pub struct TokenReview {
    #[serde(default)]
    status: TokenReviewStatus,
}

/// What the API server decided: the ServiceAccount, or why the token is refused.
pub fn review_outcome(review: TokenReview, audiences: &[String]) -> Result<ServiceAccountId, String> {
    let s = review.status;
    if !s.authenticated {
        let why = s.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "no reason given".into());
        return Err(format!("the Kubernetes API server did not accept the ServiceAccount token: {why}"));
    }
    if let Some(granted) = &s.audiences
        && !granted.iter().any(|a| audiences.contains(a))
    {
        return Err(format!("the Kubernetes API server accepted the token only for audiences {granted:?}"));
    }
    let username = s.user.map(|u| u.username).unwrap_or_default();
    ServiceAccountId::from_username(&username)
        .ok_or_else(|| format!("the token authenticates {username:?}, which is not a ServiceAccount"))
}

/// The grants `rules` give `id`: one per rule that names it, with the rule's strongest role.
pub fn principal(id: &ServiceAccountId, rules: &[ServiceAccountRule]) -> Option<Principal> {
    let grants: Vec<Grant> = rules
        .iter()
        .filter(|r| r.matches(&id.namespace, &id.name))
        .filter_map(|r| Some(Grant { role: r.roles.iter().copied().max()?, namespaces: r.namespaces.clone() }))
        .collect();
    (!grants.is_empty()).then(|| Principal { name: id.username(), grants, valid_until: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthError, Role, authorize};

    const NOW: i64 = 1_800_000_000;

    fn token(claims: serde_json::Value) -> String {
        let enc = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        format!("{}.{}.{}", enc(br#"{"alg":"RS256"}"#), enc(claims.to_string().as_bytes()), enc(b"signature"))
    }

    fn audiences() -> Vec<String> {
        vec!["confman".into(), "demo".into()]
    }

    fn sa_claims(aud: serde_json::Value, exp: i64) -> serde_json::Value {
        serde_json::json!({"sub": "system:serviceaccount:apps:web", "aud": aud, "exp": exp, "iss": "https://k8s"})
    }

    fn rule(namespace: &str, name: &str, role: Role, namespaces: &[&str]) -> ServiceAccountRule {
        ServiceAccountRule {
            namespace: namespace.into(),
            name: name.into(),
            roles: vec![Role::Viewer, role],
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_projected_token_for_this_cluster_names_its_service_account() -> Result<(), String> {
        for aud in [serde_json::json!("demo"), serde_json::json!(["other", "confman"])] {
            let (id, exp) = check_claims(&token(sa_claims(aud, NOW + 600)), &audiences(), NOW)?;
            assert_eq!(id, ServiceAccountId { namespace: "apps".into(), name: "web".into() });
            assert_eq!(id.username(), "system:serviceaccount:apps:web");
            assert_eq!(exp, Some(NOW + 600));
        }
        Ok(())
    }

    #[test]
    fn every_bad_token_class_is_refused_with_its_reason_and_without_the_token() {
        let cases = [
            ("not-a-jwt".to_string(), "no payload"),
            ("a.%%%.c".to_string(), "not base64url"),
            (format!("a.{}.c", URL_SAFE_NO_PAD.encode(b"[1,2")), "not a JSON claims set"),
            (token(serde_json::json!({"aud": "confman"})), "no subject"),
            (token(serde_json::json!({"sub": "alice", "aud": "confman"})), "is not a ServiceAccount"),
            (token(sa_claims(serde_json::json!("confman"), NOW - 5)), "expired 5 s ago"),
            (token(sa_claims(serde_json::json!(["https://kubernetes.default.svc"]), NOW + 60)), "none of which"),
            (token(serde_json::json!({"sub": "system:serviceaccount:apps:web"})), "none of which"),
            (
                token(serde_json::json!({"sub": "system:serviceaccount:apps:web", "aud": "confman", "nbf": NOW + 30})),
                "not valid for another 30 s",
            ),
        ];
        for (t, needle) in cases {
            let err = check_claims(&t, &audiences(), NOW).err().unwrap_or_default();
            assert!(err.contains(needle), "{needle}: {err}");
            assert!(!err.contains(&t), "the reason must not quote the token: {err}");
        }
    }

    #[test]
    fn only_jwt_shaped_credentials_are_taken_for_tokens() {
        assert!(looks_like_jwt(&token(sa_claims(serde_json::json!("confman"), NOW))));
        assert!(!looks_like_jwt("0123456789abcdef0123456789abcdef"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("a.b c.d"));
    }

    #[test]
    fn the_api_servers_answer_decides() {
        let parse = |v: serde_json::Value| serde_json::from_value::<TokenReview>(v).map_err(|e| e.to_string());
        let ok = parse(serde_json::json!({"status": {"authenticated": true,
            "user": {"username": "system:serviceaccount:apps:web", "groups": ["system:serviceaccounts"]},
            "audiences": ["confman"]}}));
        assert_eq!(
            ok.map(|r| review_outcome(r, &audiences())),
            Ok(Ok(ServiceAccountId { namespace: "apps".into(), name: "web".into() }))
        );
        let deleted = parse(serde_json::json!({"status": {"user": {},
            "error": "[invalid bearer token, serviceaccounts \"web\" not found]"}}));
        let err = deleted
            .map(|r| review_outcome(r, &audiences()))
            .unwrap_or(Ok(ServiceAccountId { namespace: String::new(), name: String::new() }));
        assert!(err.as_ref().is_err_and(|e| e.contains("\"web\" not found")), "{err:?}");
        let other_audience = parse(serde_json::json!({"status": {"authenticated": true,
            "user": {"username": "system:serviceaccount:apps:web"}, "audiences": ["vault"]}}));
        assert!(other_audience.map(|r| review_outcome(r, &audiences())).is_ok_and(|o| o.is_err()));
        let a_person = parse(serde_json::json!({"status": {"authenticated": true, "user": {"username": "alice"}}}));
        assert!(a_person.map(|r| review_outcome(r, &audiences())).is_ok_and(|o| o.is_err()));
    }

    #[test]
    fn rules_map_accounts_to_grants_by_name_wildcard_and_namespace_glob() -> Result<(), AuthError> {
        let rules = [
            rule("apps", "web", Role::Editor, &["web-*"]),
            rule("apps", "*", Role::Viewer, &["shared"]),
            rule("ops", "*", Role::Admin, &["*"]),
        ];
        let web = ServiceAccountId { namespace: "apps".into(), name: "web".into() };
        let p = principal(&web, &rules).ok_or(AuthError::Forbidden("no grant".into()))?;
        assert_eq!(p.name, "system:serviceaccount:apps:web");
        authorize(&p, Role::Editor, Some("web-prod"))?;
        authorize(&p, Role::Viewer, Some("shared"))?;
        // The viewer rule over `shared` does not lend the editor role to it.
        assert!(matches!(authorize(&p, Role::Editor, Some("shared")), Err(AuthError::Forbidden(_))));
        assert!(matches!(authorize(&p, Role::Viewer, Some("billing")), Err(AuthError::Forbidden(_))));
        assert!(!p.is_unscoped());

        let worker = ServiceAccountId { namespace: "apps".into(), name: "worker".into() };
        let p = principal(&worker, &rules).ok_or(AuthError::Forbidden("no grant".into()))?;
        assert!(matches!(authorize(&p, Role::Viewer, Some("web-prod")), Err(AuthError::Forbidden(_))));
        authorize(&p, Role::Viewer, Some("shared"))?;

        let ops = ServiceAccountId { namespace: "ops".into(), name: "deployer".into() };
        assert!(principal(&ops, &rules).is_some_and(|p| p.is_unscoped()));
        let stranger = ServiceAccountId { namespace: "batch".into(), name: "web".into() };
        assert_eq!(principal(&stranger, &rules), None);
        Ok(())
    }

    #[test]
    fn user_names_parse_only_as_service_accounts() {
        assert!(ServiceAccountId::from_username("system:serviceaccount:a:b").is_some());
        for bad in [
            "system:serviceaccount:a",
            "system:serviceaccount::b",
            "system:serviceaccount:a:",
            "system:node:x",
            "a:b:c:d",
        ] {
            assert_eq!(ServiceAccountId::from_username(bad), None, "{bad}");
        }
    }
}

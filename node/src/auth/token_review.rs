//! ServiceAccount tokens checked by the Kubernetes API server (TokenReview), with a short cache.
//!
//! TokenReview rather than checking signatures offline against the issuer's keys: only the API
//! server knows whether the ServiceAccount (and, for a bound token, its pod) still exists, so a
//! deleted ServiceAccount's token stops working within [`ServiceAccountAuth`]'s cache period
//! plus the API server's own token cache (10 s in kube-apiserver) instead of at the token's
//! expiry (an hour by default). The cost is one API call per new token per cache period.
//! Accepted and refused answers are cached apart, each bounded, so made-up tokens never push
//! out accepted ones; at most [`CONCURRENT_REVIEWS`] reviews are in flight and a request waits
//! at most [`REVIEW_QUEUE_WAIT`] for one (then 503), so a flood of made-up tokens turns into
//! neither a flood of API calls nor unbounded memory or waiting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use confman_contract::{ServiceAccountRule, ServiceAccountsFile};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::service_account::{ServiceAccountId, TokenReview, check_claims, principal, review_outcome};
use super::{AuthError, Principal};

/// Where a pod finds its own ServiceAccount token and the cluster's CA.
const POD_SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// How long an answer is reused unless the file says otherwise.
const DEFAULT_CACHE: Duration = Duration::from_secs(10);
/// Reviews in flight at once.
pub const CONCURRENT_REVIEWS: usize = 8;
/// Answers kept at most, accepted and refused each (a full cache drops its expired answers,
/// then all of its own kind).
const MAX_CACHED: usize = 10_000;
/// How long a request waits for a review slot before it is answered 503.
pub const REVIEW_QUEUE_WAIT: Duration = Duration::from_secs(2);
/// How long one TokenReview may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the ServiceAccounts file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("service accounts file {path}: {reason}")]
pub struct ServiceAccountsFileError {
    /// The file as configured (`--service-accounts-file`).
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

#[derive(Debug, Clone)]
struct Cached {
    outcome: Result<ServiceAccountId, String>,
    until: Instant,
}

/// Accepts ServiceAccount tokens of the configured audiences and maps them through the rules.
#[derive(Debug)]
pub struct ServiceAccountAuth {
    audiences: Vec<String>,
    rules: Vec<ServiceAccountRule>,
    cache_for: Duration,
    reviewer: Reviewer,
    accepted: Mutex<HashMap<[u8; 32], Cached>>,
    refused: Mutex<HashMap<[u8; 32], Cached>>,
    permits: Semaphore,
    /// Whether the missing-permission error was logged (once: callers can repeat it at will).
    told_forbidden: AtomicBool,
}

/// Calls `POST /apis/authentication.k8s.io/v1/tokenreviews` as the node's own ServiceAccount.
#[derive(Debug)]
struct Reviewer {
    http: reqwest::Client,
    url: String,
    /// Re-read per review: the kubelet rotates a projected token before it expires.
    own_token: PathBuf,
}

impl ServiceAccountAuth {
    /// Loads `--service-accounts-file`; the API server address defaults to the pod's
    /// (`KUBERNETES_SERVICE_HOST`/`_PORT`), its token and CA to the pod's ServiceAccount mount.
    pub fn load(path: &Path) -> Result<ServiceAccountAuth, ServiceAccountsFileError> {
        let fail = |reason: String| ServiceAccountsFileError { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let file: ServiceAccountsFile = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        confman_contract::service_accounts::check_rules(&file.rules).map_err(|e| fail(e.to_string()))?;
        if file.audiences.iter().all(String::is_empty) {
            return Err(fail("audiences must name at least one audience".into()));
        }
        let api_server = match file.api_server {
            Some(url) => url,
            None => in_pod_api_server().ok_or_else(|| {
                fail(
                    "api_server is not set and KUBERNETES_SERVICE_HOST is not in the environment (not in a pod)".into(),
                )
            })?,
        };
        let ca_file = file.ca_file.unwrap_or_else(|| Path::new(POD_SA_DIR).join("ca.crt"));
        let cas = if api_server.starts_with("https://") {
            crate::tls::trusted_cas_of("service accounts ca_file", &ca_file).map_err(|e| fail(e.to_string()))?
        } else {
            Vec::new()
        };
        let base = || confman_http::http_builder().connect_timeout(Duration::from_secs(2));
        let http = confman_http::build_http(base, &cas).map_err(|e| fail(e.to_string()))?;
        Ok(ServiceAccountAuth {
            audiences: file.audiences,
            rules: file.rules,
            cache_for: file.cache_seconds.map_or(DEFAULT_CACHE, Duration::from_secs),
            reviewer: Reviewer {
                http,
                url: format!("{}/apis/authentication.k8s.io/v1/tokenreviews", api_server.trim_end_matches('/')),
                own_token: file.token_file.unwrap_or_else(|| Path::new(POD_SA_DIR).join("token")),
            },
            accepted: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            permits: Semaphore::new(CONCURRENT_REVIEWS),
            told_forbidden: AtomicBool::new(false),
        })
    }

    /// How long a ServiceAccount whose token was accepted keeps being accepted after it is
    /// deleted, at most.
    pub fn cache_period(&self) -> Duration {
        self.cache_for
    }

    /// The principal of a ServiceAccount token: 401 with the reason for a token that is not
    /// accepted, 403 for an account no rule names, 503 when the API server cannot be asked (or
    /// every review slot stays busy for [`REVIEW_QUEUE_WAIT`]).
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (_, expires) = check_claims(token, &self.audiences, i64::try_from(now).unwrap_or(i64::MAX))
            .map_err(AuthError::BadToken)?;
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let (outcome, until) = match self.cached(&key) {
            Some(found) => found,
            None => {
                let busy = || {
                    AuthError::Unavailable(format!(
                        "{CONCURRENT_REVIEWS} ServiceAccount token reviews are in flight; try again"
                    ))
                };
                let _permit = tokio::time::timeout(REVIEW_QUEUE_WAIT, self.permits.acquire())
                    .await
                    .map_err(|_| busy())?
                    .map_err(|_| busy())?;
                match self.cached(&key) {
                    Some(found) => found,
                    None => {
                        let outcome = self.reviewer.review(token, &self.audiences).await.map_err(|e| {
                            if e.forbidden && !self.told_forbidden.swap(true, Ordering::Relaxed) {
                                tracing::error!("{}", e.reason);
                            }
                            AuthError::Unavailable(e.reason)
                        })?;
                        let left =
                            expires.map(|exp| Duration::from_secs(u64::try_from(exp).unwrap_or(0).saturating_sub(now)));
                        self.remember(key, outcome, left)
                    }
                }
            }
        };
        let id = outcome.map_err(AuthError::BadToken)?;
        let mut p = principal(&id, &self.rules).ok_or_else(|| {
            AuthError::Forbidden(format!("{} matches no serviceAccounts rule of this cluster", id.username()))
        })?;
        p.valid_until = Some(until);
        Ok(p)
    }

    fn cached(&self, key: &[u8; 32]) -> Option<(Result<ServiceAccountId, String>, Instant)> {
        let now = Instant::now();
        for cache in [&self.accepted, &self.refused] {
            let cache = cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(c) = cache.get(key).filter(|c| c.until > now) {
                return Some((c.outcome.clone(), c.until));
            }
        }
        None
    }

    /// Keeps an answer for the cache period, an accepted token no longer than it is valid;
    /// returns the answer and until when it holds.
    fn remember(
        &self,
        key: [u8; 32],
        outcome: Result<ServiceAccountId, String>,
        valid_for: Option<Duration>,
    ) -> (Result<ServiceAccountId, String>, Instant) {
        let keep = match (&outcome, valid_for) {
            (Ok(_), Some(left)) => self.cache_for.min(left),
            _ => self.cache_for,
        };
        let now = Instant::now();
        let until = now + keep;
        let cache = if outcome.is_ok() { &self.accepted } else { &self.refused };
        let mut cache = cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| c.until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, Cached { outcome: outcome.clone(), until });
        (outcome, until)
    }
}

/// Why a review could not be made.
struct ReviewFailed {
    reason: String,
    /// The API server refused this node's own call (missing RBAC): worth one loud log line.
    forbidden: bool,
}

/// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, as every pod has it.
fn in_pod_api_server() -> Option<String> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").ok().filter(|h| !h.is_empty())?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    Some(format!("https://{host}:{port}"))
}

impl Reviewer {
    /// The API server's decision (inner `Err`: the token is refused, and why), or why it could
    /// not be asked (outer `Err`).
    async fn review(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<Result<ServiceAccountId, String>, ReviewFailed> {
        let unavailable = |why: String| ReviewFailed {
            reason: format!("the ServiceAccount token could not be checked: {why}"),
            forbidden: false,
        };
        let own = tokio::fs::read_to_string(&self.own_token)
            .await
            .map_err(|e| unavailable(format!("reading this node's own token {}: {e}", self.own_token.display())))?;
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": { "token": token, "audiences": audiences },
        });
        let resp = self
            .http
            .post(&self.url)
            .bearer_auth(own.trim())
            .json(&body)
            .timeout(REVIEW_TIMEOUT)
            .send()
            .await
            .map_err(|e| unavailable(format!("TokenReview at {}: {e}", self.url)))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            let mut failed = unavailable(format!(
                "the API server refused this node's TokenReview ({status}): the members' ServiceAccount needs \
                 create on tokenreviews.authentication.k8s.io"
            ));
            failed.forbidden = true;
            return Err(failed);
        }
        if !status.is_success() {
            return Err(unavailable(format!("TokenReview answered {status}")));
        }
        let review: TokenReview =
            resp.json().await.map_err(|e| unavailable(format!("reading the TokenReview answer: {e}")))?;
        Ok(review_outcome(review, audiences))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn load(text: &str) -> Result<ServiceAccountAuth, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("service-accounts.toml");
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        ServiceAccountAuth::load(&path).map_err(|e| e.to_string())
    }

    const RULE: &str =
        "[[rules]]\nnamespace = \"apps\"\nname = \"web\"\nroles = [\"editor\"]\nnamespaces = [\"web-*\"]\n";

    #[test]
    fn a_usable_file_loads_and_a_broken_one_is_refused_naming_what_is_wrong() {
        let ok =
            load(&format!("audiences = [\"confman\"]\ncache_seconds = 3\napi_server = \"http://127.0.0.1:1\"\n{RULE}"));
        assert!(ok.as_ref().is_ok_and(|a| a.cache_period() == Duration::from_secs(3)), "{ok:?}");
        for (text, needle) in [
            (format!("audiences = []\napi_server = \"http://127.0.0.1:1\"\n{RULE}"), "audiences must name"),
            (
                format!(
                    "audiences = [\"confman\"]\napi_server = \"http://127.0.0.1:1\"\n{}",
                    RULE.replace("[\"editor\"]", "[]")
                ),
                "at least one role",
            ),
            (
                format!("audiences = [\"confman\"]\napi_server = \"http://127.0.0.1:1\"\nextra = 1\n{RULE}"),
                "unknown field",
            ),
            (
                format!(
                    "audiences = [\"confman\"]\napi_server = \"https://127.0.0.1:1\"\nca_file = \"/nonexistent/ca.crt\"\n{RULE}"
                ),
                "ca_file",
            ),
        ] {
            let err = load(&text).err().unwrap_or_default();
            assert!(err.contains(needle) && err.starts_with("service accounts file "), "{needle}: {err}");
        }
    }

    /// A stand-in for the API server's TokenReview endpoint that counts the reviews it answers:
    /// it accepts tokens of `apps:web` and `apps:other`, refuses the rest as the API server
    /// refuses a deleted account's token, and answers 403 to a caller whose own token is
    /// `no-rbac` (a member whose ServiceAccount may not create TokenReviews).
    async fn fake_api_server() -> Result<(String, Arc<AtomicUsize>), Box<dyn std::error::Error>> {
        use axum::Json;
        use axum::http::{HeaderMap, StatusCode};
        let reviews = Arc::new(AtomicUsize::new(0));
        let counted = reviews.clone();
        let answer = move |headers: HeaderMap, Json(body): Json<serde_json::Value>| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                if headers.get("authorization").is_some_and(|v| v == "Bearer no-rbac") {
                    return (StatusCode::FORBIDDEN, Json(serde_json::json!({"kind": "Status"})));
                }
                let token = body["spec"]["token"].as_str().unwrap_or_default();
                let claims = token.split('.').nth(1).and_then(|p| URL_SAFE_NO_PAD.decode(p).ok()).unwrap_or_default();
                let sub = serde_json::from_slice::<serde_json::Value>(&claims).unwrap_or_default()["sub"].clone();
                let status = match sub.as_str() {
                    Some(u @ ("system:serviceaccount:apps:web" | "system:serviceaccount:apps:other")) => {
                        serde_json::json!({"authenticated": true, "user": {"username": u}, "audiences": ["confman"]})
                    }
                    _ => {
                        serde_json::json!({"user": {}, "error": "[invalid bearer token, serviceaccounts \"gone\" not found]"})
                    }
                };
                (StatusCode::CREATED, Json(serde_json::json!({"kind": "TokenReview", "status": status})))
            }
        };
        let app = axum::Router::new().route("/apis/authentication.k8s.io/v1/tokenreviews", axum::routing::post(answer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((url, reviews))
    }

    fn token_of(account: &str) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = serde_json::json!({"sub": format!("system:serviceaccount:apps:{account}"), "aud": ["confman"], "exp": now + 600});
        format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    fn auth_at(url: &str, own_token: &str, dir: &Path) -> Result<ServiceAccountAuth, String> {
        let own = dir.join("own-token");
        std::fs::write(&own, own_token).map_err(|e| e.to_string())?;
        let file =
            format!("audiences = [\"confman\"]\napi_server = \"{url}\"\ntoken_file = \"{}\"\n{RULE}", own.display());
        std::fs::write(dir.join("sa.toml"), file).map_err(|e| e.to_string())?;
        ServiceAccountAuth::load(&dir.join("sa.toml")).map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn answers_are_reused_for_the_cache_period_and_each_outcome_has_its_status()
    -> Result<(), Box<dyn std::error::Error>> {
        let (url, reviews) = fake_api_server().await?;
        let dir = tempfile::tempdir()?;
        let auth = auth_at(&url, "member-token", dir.path())?;

        let web = token_of("web");
        for _ in 0..3 {
            let p = auth.authenticate(&web).await?;
            assert_eq!(p.name, "system:serviceaccount:apps:web");
            let left = p.valid_until.map(|u| u.saturating_duration_since(Instant::now()));
            assert!(left.is_some_and(|l| l <= auth.cache_period()), "valid no longer than the cache period: {left:?}");
        }
        assert_eq!(reviews.load(Ordering::SeqCst), 1, "one review for three requests within the cache period");

        // Accepted by the API server but named by no rule: 403 (and also asked once).
        let other = token_of("other");
        for _ in 0..2 {
            assert!(
                matches!(auth.authenticate(&other).await, Err(AuthError::Forbidden(m)) if m.contains("apps:other"))
            );
        }
        // Refused by the API server: 401 with its reason, the refusal reused as well.
        let gone = token_of("gone");
        for _ in 0..2 {
            let err = auth.authenticate(&gone).await;
            assert!(matches!(&err, Err(AuthError::BadToken(m)) if m.contains("not found")), "{err:?}");
        }
        assert_eq!(reviews.load(Ordering::SeqCst), 3, "one review per distinct token");
        // Refused by its claims: no review at all.
        assert!(matches!(auth.authenticate("e30.e30.c2ln").await, Err(AuthError::BadToken(_))));
        assert_eq!(reviews.load(Ordering::SeqCst), 3);

        // A member without the RBAC to review: 503 naming the permission, nothing cached.
        let dir = tempfile::tempdir()?;
        let unprivileged = auth_at(&url, "no-rbac", dir.path())?;
        for _ in 0..2 {
            let err = unprivileged.authenticate(&web).await;
            assert!(matches!(&err, Err(AuthError::Unavailable(m)) if m.contains("create on tokenreviews")), "{err:?}");
        }
        assert_eq!(reviews.load(Ordering::SeqCst), 5, "an unavailable answer is not cached");
        Ok(())
    }
}

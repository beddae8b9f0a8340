//! HTTP API behaviour on a real single-node cluster: compare-and-set, history, the auth
//! matrix, and bad input that must be refused without changing anything.

use std::path::Path;

use confman_tests::cluster::{Cluster, HarnessError, Result};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_confman-node");

async fn put_with(
    c: &Cluster,
    path: &str,
    header: Option<(&str, &str)>,
    value: &str,
) -> Result<(StatusCode, reqwest::header::HeaderMap)> {
    let mut req = c
        .request(1, Method::PUT, path)?
        .bearer_auth(&c.keys.editor)
        .header("content-type", "text/plain")
        .body(value.to_string());
    if let Some((h, v)) = header {
        req = req.header(h, v);
    }
    let resp = req.send().await?;
    Ok((resp.status(), resp.headers().clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_and_history() -> Result<()> {
    let c = Cluster::start(Path::new(BIN), 1, &["--history-depth", "3"]).await?;
    c.create_namespace(1, "cas").await?;
    let path = "/api/v1/namespaces/cas/config/db/url";

    // The ETag is the revision of the entry's last change, as in the X-Confman-Revision header.
    let etag_of = |h: &reqwest::header::HeaderMap| -> Result<String> {
        let etag = h
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| HarnessError::Unexpected("no ETag".into()))?
            .to_string();
        let rev = h
            .get("x-confman-revision")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| HarnessError::Unexpected("no revision".into()))?;
        assert_eq!(etag, format!("\"r{rev}\""), "ETag is the write's revision");
        Ok(etag)
    };

    // Create-only: first succeeds, second gets 412 and changes nothing.
    let (st, h) = put_with(&c, path, Some(("if-none-match", "*")), "one").await?;
    assert_eq!(st, StatusCode::CREATED);
    let e1 = etag_of(&h)?;
    let (st, _) = put_with(&c, path, Some(("if-none-match", "*")), "two").await?;
    assert_eq!(st, StatusCode::PRECONDITION_FAILED);
    assert_eq!(c.get(1, "cas", "db/url", false).await?.map(|v| v["value"].clone()), Some(json!("one")));

    // Compare-and-set with the current ETag works; a stale one gets 412 and changes nothing.
    let (st, h) = put_with(&c, path, Some(("if-match", &e1)), "two").await?;
    assert_eq!(st, StatusCode::OK);
    let e2 = etag_of(&h)?;
    assert_ne!(e2, e1);
    let resp = c
        .request(1, Method::PUT, path)?
        .bearer_auth(&c.keys.editor)
        .header("content-type", "text/plain")
        .header("if-match", &e1)
        .body("stale")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/problem+json"));
    let problem: Value = resp.json().await?;
    assert_eq!(problem["currentVersion"], json!(2));
    assert_eq!(format!("\"r{}\"", problem["currentRevision"]), e2, "the 412 names the current ETag: {problem}");
    // A bare number (an older client's version ETag) or a weak ETag is refused, not matched.
    for bad in ["\"2\"", "W/\"r1\""] {
        let (st, _) = put_with(&c, path, Some(("if-match", bad)), "nope").await?;
        assert_eq!(st, StatusCode::BAD_REQUEST, "If-Match {bad}");
    }
    let entry = c.get(1, "cas", "db/url", false).await?.unwrap_or_default();
    assert_eq!((entry["value"].clone(), entry["version"].clone()), (json!("two"), json!(2)));

    // History keeps the current version plus `history-depth` superseded ones, newest first.
    let mut etag = e2;
    for i in 3..=6 {
        let (st, h) = put_with(&c, path, None, &format!("v{i}")).await?;
        assert_eq!(st, StatusCode::OK);
        etag = etag_of(&h)?;
    }
    let (st, hist) = c.call(1, Method::GET, &format!("{path}/history"), &c.keys.viewer, None).await?;
    assert_eq!(st, StatusCode::OK);
    let versions: Vec<u64> =
        hist["items"].as_array().map(|a| a.iter().filter_map(|e| e["version"].as_u64()).collect()).unwrap_or_default();
    assert_eq!(versions, vec![6, 5, 4, 3]);
    assert_eq!(hist["items"][1]["value"], json!("v5"));

    // Raw read returns the bytes with the metadata in headers.
    let resp = c
        .request(1, Method::GET, path)?
        .bearer_auth(&c.keys.viewer)
        .header("accept", "application/octet-stream")
        .send()
        .await?;
    assert_eq!(resp.headers().get("x-confman-version").and_then(|v| v.to_str().ok()), Some("6"));
    assert_eq!(resp.headers().get("etag").and_then(|v| v.to_str().ok()), Some(etag.as_str()));
    assert!(resp.headers().contains_key("x-confman-revision"));
    assert_eq!(resp.bytes().await?.as_ref(), b"v6");

    // Delete with a stale If-Match is refused; with the right one it succeeds.
    let resp = c.request(1, Method::DELETE, path)?.bearer_auth(&c.keys.editor).header("if-match", &e1).send().await?;
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    let resp = c.request(1, Method::DELETE, path)?.bearer_auth(&c.keys.editor).header("if-match", &etag).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(c.get(1, "cas", "db/url", false).await?, None);

    // Audit: newest first, one event per change, with versions.
    let (_, audit) = c.call(1, Method::GET, "/api/v1/namespaces/cas/audit?limit=2", &c.keys.viewer, None).await?;
    assert_eq!(audit["items"][0]["action"], json!("config.deleted"));
    assert_eq!(audit["items"][0]["oldVersion"], json!(6));
    assert_eq!(audit["items"][1]["action"], json!("config.updated"));
    assert_eq!(audit["items"][1]["actor"], json!("editor"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_with_prefix_and_continue() -> Result<()> {
    let c = Cluster::start(Path::new(BIN), 1, &[]).await?;
    c.create_namespace(1, "list").await?;
    for k in ["a/1", "a/2", "a/3", "b/1", "a/4"] {
        assert_eq!(c.put_text(1, "list", k, k).await?.0, StatusCode::CREATED);
    }
    let mut keys = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let cont = next.as_ref().map(|t| format!("&continue={t}")).unwrap_or_default();
        let (st, page) = c
            .call(
                1,
                Method::GET,
                &format!("/api/v1/namespaces/list/config?prefix=a/&limit=2{cont}"),
                &c.keys.viewer,
                None,
            )
            .await?;
        assert_eq!(st, StatusCode::OK, "{page}");
        for item in page["items"].as_array().cloned().unwrap_or_default() {
            assert!(item.get("value").is_none(), "values only with includeValues");
            keys.push(item["key"].as_str().unwrap_or_default().to_string());
        }
        match page["continue"].as_str() {
            Some(t) => next = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(keys, vec!["a/1", "a/2", "a/3", "a/4"]);
    let (_, page) = c
        .call(1, Method::GET, "/api/v1/namespaces/list/config?includeValues=true&limit=1", &c.keys.viewer, None)
        .await?;
    assert_eq!(page["items"][0]["value"], json!("a/1"));
    Ok(())
}

/// A request body: (content type, bytes).
type Body = Option<(&'static str, &'static str)>;

/// One row of the auth matrix. `NS` in a path is replaced by the namespace under test.
struct Case {
    method: Method,
    path: &'static str,
    body: Body,
    /// Minimum role: 0 viewer, 1 editor, 2 admin, 3 unscoped admin (cluster administration).
    need: u8,
    /// The exact status a key that is allowed gets.
    allowed: StatusCode,
    /// For a request that changes state: the request (sent with the admin key) that puts the
    /// state back after an allowed call, and its exact status, so every key meets the same
    /// state and has one exact answer.
    undo: Option<(Method, &'static str, Body, StatusCode)>,
}

impl Case {
    fn new(method: Method, path: &'static str, need: u8, allowed: StatusCode) -> Case {
        Case { method, path, body: None, need, allowed, undo: None }
    }

    fn body(self, content_type: &'static str, body: &'static str) -> Case {
        Case { body: Some((content_type, body)), ..self }
    }

    fn undo(self, method: Method, path: &'static str, body: Body, status: StatusCode) -> Case {
        Case { undo: Some((method, path, body, status)), ..self }
    }
}

/// Sends a matrix request with an optional (header, value) credential.
async fn send(
    c: &Cluster,
    method: &Method,
    path: &str,
    body: Body,
    auth: Option<(&str, &str)>,
) -> Result<reqwest::Response> {
    let mut req = c.request(1, method.clone(), path)?;
    if let Some((h, v)) = auth {
        req = req.header(h, v);
    }
    if let Some((ct, b)) = body {
        req = req.header("content-type", ct).body(b);
    }
    Ok(req.send().await?)
}

fn content_type(resp: &reqwest::Response) -> Option<String> {
    resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Every principal against every endpoint class, each with the exact status it must get; a
/// refused request changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_matrix() -> Result<()> {
    let c = Cluster::start(Path::new(BIN), 1, &[]).await?;
    for ns in ["team-a.web", "other"] {
        c.create_namespace(1, ns).await?;
        assert_eq!(c.put_text(1, ns, "k", "v").await?.0, StatusCode::CREATED);
        assert_eq!(c.put_text(1, ns, "k-del", "v").await?.0, StatusCode::CREATED);
        c.create_namespace(1, &format!("{ns}-gone")).await?;
    }

    use StatusCode as S;
    let json = "application/json";
    let cases = [
        Case::new(Method::GET, "/api/v1/namespaces", 0, S::OK),
        Case::new(Method::GET, "/api/v1/namespaces/NS", 0, S::OK),
        Case::new(Method::GET, "/api/v1/namespaces/NS/config", 0, S::OK),
        Case::new(Method::GET, "/api/v1/namespaces/NS/config/k", 0, S::OK),
        Case::new(Method::GET, "/api/v1/namespaces/NS/config/k/history", 0, S::OK),
        Case::new(Method::GET, "/api/v1/namespaces/NS/audit", 0, S::OK),
        // A stream: the answer's status is all the matrix reads; dropping it closes it.
        Case::new(Method::GET, "/api/v1/namespaces/NS/watch", 0, S::OK),
        Case::new(Method::PUT, "/api/v1/namespaces/NS/config/k-put", 1, S::CREATED).body("text/plain", "x").undo(
            Method::DELETE,
            "/api/v1/namespaces/NS/config/k-put",
            None,
            S::OK,
        ),
        Case::new(Method::DELETE, "/api/v1/namespaces/NS/config/k-del", 1, S::OK).undo(
            Method::PUT,
            "/api/v1/namespaces/NS/config/k-del",
            Some(("text/plain", "v")),
            S::CREATED,
        ),
        // An existing namespace: an update.
        Case::new(Method::PUT, "/api/v1/namespaces/NS", 2, S::OK),
        Case::new(Method::DELETE, "/api/v1/namespaces/NS-gone", 2, S::OK).undo(
            Method::PUT,
            "/api/v1/namespaces/NS-gone",
            None,
            S::CREATED,
        ),
        Case::new(Method::GET, "/api/v1/cluster", 0, S::OK),
        // The digest reads the whole state: cluster administration.
        Case::new(Method::GET, "/api/v1/cluster/digest", 3, S::OK),
        Case::new(Method::GET, "/api/v1/cluster/settings", 0, S::OK),
        // The depth the cluster already has: allowed, and nothing changes.
        Case::new(Method::PUT, "/api/v1/cluster/settings", 3, S::OK).body(json, r#"{"historyDepth": 10}"#),
        Case::new(Method::POST, "/api/v1/cluster/snapshot", 3, S::OK),
        // Membership changes, aimed so that an allowed call changes nothing: node 1 is already a
        // member (409), node 99 is not one (404).
        Case::new(Method::POST, "/api/v1/cluster/members", 3, S::CONFLICT)
            .body(json, r#"{"id": 1, "address": "http://127.0.0.1:9"}"#),
        Case::new(Method::POST, "/api/v1/cluster/members/99", 3, S::NOT_FOUND),
        Case::new(Method::DELETE, "/api/v1/cluster/members/99", 3, S::NOT_FOUND),
        Case::new(Method::POST, "/api/v1/cluster/members/99/rejoin", 3, S::NOT_FOUND),
        // Leadership to the node that already leads: answered at once, nothing moves.
        Case::new(Method::POST, "/api/v1/cluster/leader", 3, S::OK).body(json, r#"{"to": 1}"#),
    ];
    // (name, key, role level, covers team-a.*, covers other)
    let principals = [
        ("viewer", c.keys.viewer.as_str(), 0u8, true, true),
        ("editor", c.keys.editor.as_str(), 1, true, true),
        ("admin", c.keys.admin.as_str(), 3, true, true),
        ("cluster-token", c.keys.token.as_str(), 3, true, true),
        ("scoped-editor", c.keys.scoped_editor.as_str(), 1, true, false),
        ("scoped-admin", c.keys.scoped_admin.as_str(), 2, true, false),
    ];
    // No key, or a key this cluster does not know (in either header): 401.
    let another_cluster = confman_tests::cluster::TestKeys::generate().admin;
    let bearer_other = format!("Bearer {another_cluster}");
    let unauthenticated = [
        ("no key", None),
        ("wrong X-Api-Key", Some(("x-api-key", "wrong-key"))),
        ("wrong Bearer key", Some(("authorization", bearer_other.as_str()))),
    ];
    let admin_auth = format!("Bearer {}", c.keys.admin);

    for ns in ["team-a.web", "other"] {
        for case in &cases {
            let path = case.path.replace("NS", ns);
            let namespaced = case.path.contains("NS");
            let (method, need) = (&case.method, case.need);
            for (name, key, level, covers_a, covers_other) in principals {
                let covers = if ns == "other" { covers_other } else { covers_a };
                // Cluster administration needs a key that covers every namespace.
                let level = if need == 3 && !(covers_a && covers_other) { level.min(2) } else { level };
                let allowed = level >= need && (!namespaced || covers);
                let before = if allowed { None } else { Some(c.digest(1).await?) };
                let resp =
                    send(&c, method, &path, case.body, Some(("authorization", &format!("Bearer {key}")))).await?;
                let st = resp.status();
                if allowed {
                    assert_eq!(st, case.allowed, "{name} {method} {path}");
                    if let Some((m, tmpl, body, want)) = &case.undo {
                        let undo_path = tmpl.replace("NS", ns);
                        let r = send(&c, m, &undo_path, *body, Some(("authorization", &admin_auth))).await?;
                        assert_eq!(r.status(), *want, "undo {m} {undo_path} after {name}");
                    }
                } else {
                    assert_eq!(st, S::FORBIDDEN, "{name} {method} {path}");
                    assert_eq!(content_type(&resp).as_deref(), Some("application/problem+json"));
                    assert_eq!(
                        Some(c.digest(1).await?),
                        before,
                        "{name} {method} {path} was refused but changed state"
                    );
                }
            }
            for (what, auth) in unauthenticated {
                let before = c.digest(1).await?;
                let resp = send(&c, method, &path, case.body, auth).await?;
                assert_eq!(resp.status(), S::UNAUTHORIZED, "{what} {method} {path}");
                assert_eq!(content_type(&resp).as_deref(), Some("application/problem+json"), "{what}");
                assert_eq!(c.digest(1).await?, before, "{what} {method} {path} changed state");
            }
        }
    }
    // Listing namespaces shows only what a scoped key covers.
    let (_, list) = c.call(1, Method::GET, "/api/v1/namespaces", &c.keys.scoped_editor, None).await?;
    let names: Vec<&str> =
        list["items"].as_array().map(|a| a.iter().filter_map(|n| n["name"].as_str()).collect()).unwrap_or_default();
    assert_eq!(names, vec!["team-a.web", "team-a.web-gone"]);
    // Node 1 still leads and is still the only member.
    let info = c.cluster_info(1).await?;
    assert_eq!((info["leaderId"].as_u64(), info["members"].as_array().map(Vec::len)), (Some(1), Some(1)), "{info}");

    // Raft RPC: no token, a wrong token and a client API key are all refused.
    for auth in [None, Some("wrong-token"), Some(c.keys.admin.as_str())] {
        let mut req = c.request(1, Method::POST, "/raft/append")?.body(vec![0u8; 4]);
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        assert_eq!(req.send().await?.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
    }
    // The right token reaches the handler (which then refuses the garbage body as 400).
    let st = c
        .request(1, Method::POST, "/raft/append")?
        .bearer_auth(&c.keys.token)
        .body(vec![0xffu8; 4])
        .send()
        .await?
        .status();
    assert_eq!(st, StatusCode::BAD_REQUEST);
    Ok(())
}

/// Bad input gets a 4xx problem+json and leaves the state (and revision) unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() -> Result<()> {
    let c = Cluster::start(Path::new(BIN), 1, &["--max-value-bytes", "1024", "--body-limit-bytes", "4096"]).await?;
    c.create_namespace(1, "bad").await?;
    c.put_text(1, "bad", "k", "original").await?;
    // Each read must succeed: two failed reads would compare equal.
    let snapshot_state = || async {
        let mut out = Vec::new();
        for path in
            ["/api/v1/namespaces/bad/audit", "/api/v1/namespaces", "/api/v1/namespaces/bad/config?includeValues=true"]
        {
            let (st, v) = c.call(1, Method::GET, path, &c.keys.admin, None).await?;
            assert_eq!(st, StatusCode::OK, "{path}: {v}");
            out.push(v);
        }
        Result::Ok(out)
    };
    let before = snapshot_state().await?;

    let big = "x".repeat(2048);
    let huge = "x".repeat(8192);
    // (method, path, content-type, body, expected status)
    let cases: Vec<(Method, String, Option<&str>, String, u16)> = vec![
        (Method::PUT, "/api/v1/namespaces/bad/config/k".into(), Some("application/json"), "{not json".into(), 400),
        (
            Method::PUT,
            "/api/v1/namespaces/bad/config/k".into(),
            Some("application/json"),
            r#"{"value":"a","extra":1}"#.into(),
            400,
        ),
        (
            Method::PUT,
            "/api/v1/namespaces/bad/config/k".into(),
            Some("application/json"),
            r#"{"value":"@@","encoding":"base64"}"#.into(),
            400,
        ),
        (Method::PUT, "/api/v1/namespaces/bad/config/k".into(), Some("application/xml"), "<a/>".into(), 415),
        (Method::PUT, "/api/v1/namespaces/bad/config/k".into(), None, "x".into(), 415),
        (Method::PUT, "/api/v1/namespaces/bad/config/k".into(), Some("text/plain"), big.clone(), 413),
        (Method::PUT, "/api/v1/namespaces/bad/config/k".into(), Some("text/plain"), huge.clone(), 413),
        (Method::PUT, "/api/v1/namespaces/bad/config/bad%20key".into(), Some("text/plain"), "x".into(), 400),
        (
            Method::PUT,
            format!("/api/v1/namespaces/bad/config/{}", "k".repeat(300)),
            Some("text/plain"),
            "x".into(),
            400,
        ),
        (Method::PUT, "/api/v1/namespaces/Bad_NS".into(), Some("application/json"), "{}".into(), 400),
        (Method::PUT, "/api/v1/namespaces/bad".into(), Some("application/json"), r#"{"descr":"x"}"#.into(), 400),
        (Method::PUT, "/api/v1/namespaces/missing/config/k".into(), Some("text/plain"), "x".into(), 404),
        (Method::GET, "/api/v1/namespaces/bad/config?limit=0".into(), None, String::new(), 400),
        (Method::GET, "/api/v1/namespaces/missing/config".into(), None, String::new(), 404),
        (Method::GET, "/api/v1/namespaces/bad/config?limit=abc".into(), None, String::new(), 400),
        (Method::GET, "/api/v1/namespaces/bad/config?continue=%%%".into(), None, String::new(), 400),
        (Method::GET, "/api/v1/namespaces/bad/config?continue=bm90IGEga2V5IQ".into(), None, String::new(), 400),
        (Method::GET, "/api/v1/namespaces/bad/config?bogus=1".into(), None, String::new(), 400),
        (Method::GET, "/api/v1/namespaces/bad/config/k?consistency=eventual".into(), None, String::new(), 400),
        (Method::PUT, "/api/v1/namespaces/bad/config/k".into(), Some("text/plain"), "x".into(), 400),
    ];
    for (i, (method, path, ct, body, want)) in cases.into_iter().enumerate() {
        let mut req = c.request(1, method.clone(), &path)?.bearer_auth(&c.keys.admin);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        if i == 19 {
            req = req.header("if-none-match", "\"3\"");
        }
        if !body.is_empty() {
            req = req.body(body);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let problem: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want, "case {i}: {method} {path}: {problem}");
        assert_eq!(ctype, "application/problem+json", "case {i}");
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "case {i}: {problem}");
        if want == 413 {
            assert!(problem["limit"].as_u64().is_some(), "413 names the limit: {problem}");
        }
    }
    // Nothing changed.
    assert_eq!(snapshot_state().await?, before);
    let entry = c.get(1, "bad", "k", false).await?.unwrap_or_default();
    assert_eq!((entry["value"].clone(), entry["version"].clone()), (json!("original"), json!(1)));
    Ok(())
}

/// Compare-and-set compared versions, which restart at 1 after a delete: an `If-Match` read
/// from the key's first incarnation matched the second one (ABA). The ETag is now the
/// revision of the last change, never reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etag_from_a_deleted_incarnation_never_matches_the_new_one() -> Result<()> {
    let c = Cluster::start(Path::new(BIN), 1, &[]).await?;
    c.create_namespace(1, "aba").await?;
    let path = "/api/v1/namespaces/aba/config/flag";
    let (st, h) = put_with(&c, path, None, "first").await?;
    assert_eq!(st, StatusCode::CREATED);
    let old = h
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| HarnessError::Unexpected("no ETag".into()))?
        .to_string();
    let resp = c.request(1, Method::DELETE, path)?.bearer_auth(&c.keys.editor).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let (st, h) = put_with(&c, path, None, "second").await?;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(h.get("x-confman-version").and_then(|v| v.to_str().ok()), Some("1"), "version restarted");
    let new = h
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| HarnessError::Unexpected("no ETag".into()))?
        .to_string();
    assert_ne!(new, old);
    let (st, _) = put_with(&c, path, Some(("if-match", &old)), "overwrite").await?;
    assert_eq!(st, StatusCode::PRECONDITION_FAILED, "an ETag of the deleted incarnation matched");
    let entry = c.get(1, "aba", "flag", false).await?.unwrap_or_default();
    assert_eq!(entry["value"], json!("second"), "nothing overwritten");
    Ok(())
}

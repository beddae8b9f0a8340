//! HTTP API behaviour on a real single-node cluster: compare-and-set, history, the auth
//! matrix, and bad input that must be refused without changing anything.

use std::path::Path;

use confman_tests::cluster::{
    ADMIN_KEY, CLUSTER_TOKEN, Cluster, EDITOR_KEY, Result, SCOPED_ADMIN_KEY, SCOPED_EDITOR_KEY, VIEWER_KEY,
};
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
        .bearer_auth(EDITOR_KEY)
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

    // Create-only: first succeeds, second gets 412 and changes nothing.
    let (st, h) = put_with(&c, path, Some(("if-none-match", "*")), "one").await?;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(h.get("etag").and_then(|v| v.to_str().ok()), Some("\"1\""));
    let (st, _) = put_with(&c, path, Some(("if-none-match", "*")), "two").await?;
    assert_eq!(st, StatusCode::PRECONDITION_FAILED);
    assert_eq!(c.get(1, "cas", "db/url", false).await?.map(|v| v["value"].clone()), Some(json!("one")));

    // Compare-and-set with the current ETag works; a stale one gets 412 and changes nothing.
    let (st, h) = put_with(&c, path, Some(("if-match", "\"1\"")), "two").await?;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(h.get("etag").and_then(|v| v.to_str().ok()), Some("\"2\""));
    let resp = c
        .request(1, Method::PUT, path)?
        .bearer_auth(EDITOR_KEY)
        .header("content-type", "text/plain")
        .header("if-match", "\"1\"")
        .body("stale")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/problem+json"));
    let problem: Value = resp.json().await?;
    assert_eq!(problem["currentVersion"], json!(2));
    let entry = c.get(1, "cas", "db/url", false).await?.unwrap_or_default();
    assert_eq!((entry["value"].clone(), entry["version"].clone()), (json!("two"), json!(2)));

    // History keeps the current version plus `history-depth` superseded ones, newest first.
    for i in 3..=6 {
        let (st, _) = put_with(&c, path, None, &format!("v{i}")).await?;
        assert_eq!(st, StatusCode::OK);
    }
    let (st, hist) = c.call(1, Method::GET, &format!("{path}/history"), VIEWER_KEY, None).await?;
    assert_eq!(st, StatusCode::OK);
    let versions: Vec<u64> =
        hist["items"].as_array().map(|a| a.iter().filter_map(|e| e["version"].as_u64()).collect()).unwrap_or_default();
    assert_eq!(versions, vec![6, 5, 4, 3]);
    assert_eq!(hist["items"][1]["value"], json!("v5"));

    // Raw read returns the bytes with the metadata in headers.
    let resp = c
        .request(1, Method::GET, path)?
        .bearer_auth(VIEWER_KEY)
        .header("accept", "application/octet-stream")
        .send()
        .await?;
    assert_eq!(resp.headers().get("x-confman-version").and_then(|v| v.to_str().ok()), Some("6"));
    assert!(resp.headers().contains_key("x-confman-revision"));
    assert_eq!(resp.bytes().await?.as_ref(), b"v6");

    // Delete with a stale If-Match is refused; with the right one it succeeds.
    let resp = c.request(1, Method::DELETE, path)?.bearer_auth(EDITOR_KEY).header("if-match", "\"5\"").send().await?;
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    let resp = c.request(1, Method::DELETE, path)?.bearer_auth(EDITOR_KEY).header("if-match", "\"6\"").send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(c.get(1, "cas", "db/url", false).await?, None);

    // Audit: newest first, one event per change, with versions.
    let (_, audit) = c.call(1, Method::GET, "/api/v1/namespaces/cas/audit?limit=2", VIEWER_KEY, None).await?;
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
        c.put_text(1, "list", k, k).await?;
    }
    let mut keys = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let cont = next.as_ref().map(|t| format!("&continue={t}")).unwrap_or_default();
        let (st, page) = c
            .call(1, Method::GET, &format!("/api/v1/namespaces/list/config?prefix=a/&limit=2{cont}"), VIEWER_KEY, None)
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
    let (_, page) =
        c.call(1, Method::GET, "/api/v1/namespaces/list/config?includeValues=true&limit=1", VIEWER_KEY, None).await?;
    assert_eq!(page["items"][0]["value"], json!("a/1"));
    Ok(())
}

/// Every role against every endpoint class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_matrix() -> Result<()> {
    let c = Cluster::start(Path::new(BIN), 1, &[]).await?;
    c.create_namespace(1, "team-a.web").await?;
    c.create_namespace(1, "other").await?;
    c.put_text(1, "team-a.web", "k", "v").await?;
    c.put_text(1, "other", "k", "v").await?;

    // (method, path, body, minimum role) — role: 0 viewer, 1 editor, 2 admin, 3 unscoped admin.
    let text = |s: &str| Some(s.to_string());
    let cases: Vec<(Method, &str, Option<String>, u8)> = vec![
        (Method::GET, "/api/v1/namespaces/NS", None, 0),
        (Method::GET, "/api/v1/namespaces/NS/config", None, 0),
        (Method::GET, "/api/v1/namespaces/NS/config/k", None, 0),
        (Method::GET, "/api/v1/namespaces/NS/config/k/history", None, 0),
        (Method::GET, "/api/v1/namespaces/NS/audit", None, 0),
        (Method::PUT, "/api/v1/namespaces/NS/config/k2", text("x"), 1),
        (Method::DELETE, "/api/v1/namespaces/NS/config/k2", None, 1),
        (Method::PUT, "/api/v1/namespaces/NS", None, 2),
        (Method::GET, "/api/v1/cluster", None, 0),
        (Method::POST, "/api/v1/cluster/snapshot", None, 3),
    ];
    // (key, role level, covers team-a.*, covers other)
    let principals = [
        (VIEWER_KEY, 0u8, true, true),
        (EDITOR_KEY, 1, true, true),
        (ADMIN_KEY, 3, true, true),
        (SCOPED_EDITOR_KEY, 1, true, false),
        (SCOPED_ADMIN_KEY, 2, true, false),
    ];
    for ns in ["team-a.web", "other"] {
        for (method, tmpl, body, need) in &cases {
            let path = tmpl.replace("NS", ns);
            let namespaced = tmpl.contains("NS");
            for (key, level, covers_a, covers_other) in principals {
                let covers = if ns == "other" { covers_other } else { covers_a };
                let level = if *need == 3 && !(covers_a && covers_other) { level.min(2) } else { level };
                let allowed = level >= *need && (!namespaced || covers);
                let mut req = c.request(1, method.clone(), &path)?.bearer_auth(key);
                if let Some(b) = body {
                    req = req.header("content-type", "text/plain").body(b.clone());
                }
                let st = req.send().await?.status();
                if allowed {
                    // A delete repeated by the next allowed key finds nothing: 404, not a denial.
                    assert!(
                        st.is_success() || st == StatusCode::NOT_FOUND,
                        "{key} {method} {path}: expected success, got {st}"
                    );
                } else {
                    assert_eq!(st, StatusCode::FORBIDDEN, "{key} {method} {path}");
                }
            }
            // No key and a wrong key: 401 with problem+json.
            for key in [None, Some("wrong-key")] {
                let mut req = c.request(1, method.clone(), &path)?;
                if let Some(k) = key {
                    req = req.header("x-api-key", k);
                }
                let resp = req.send().await?;
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{key:?} {method} {path}");
                assert_eq!(
                    resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
                    Some("application/problem+json")
                );
            }
        }
    }
    // Listing namespaces shows only what a scoped key covers.
    let (_, list) = c.call(1, Method::GET, "/api/v1/namespaces", SCOPED_EDITOR_KEY, None).await?;
    let names: Vec<&str> =
        list["items"].as_array().map(|a| a.iter().filter_map(|n| n["name"].as_str()).collect()).unwrap_or_default();
    assert_eq!(names, vec!["team-a.web"]);

    // Raft RPC: no token, a wrong token and a client API key are all refused.
    for auth in [None, Some("wrong-token"), Some(ADMIN_KEY)] {
        let mut req = c.request(1, Method::POST, "/raft/append")?.body(vec![0u8; 4]);
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        assert_eq!(req.send().await?.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
    }
    // The cluster token is an unscoped admin credential on the client API (the operator's).
    let r = c.request(1, Method::GET, "/api/v1/cluster")?.bearer_auth(CLUSTER_TOKEN).send().await?;
    assert_eq!(r.status(), StatusCode::OK, "cluster token as admin");
    // The right token reaches the handler (which then refuses the garbage body as 400).
    let st = c
        .request(1, Method::POST, "/raft/append")?
        .bearer_auth(CLUSTER_TOKEN)
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
    let snapshot_state = || async {
        let (_, audit) = c.call(1, Method::GET, "/api/v1/namespaces/bad/audit", ADMIN_KEY, None).await?;
        let (_, namespaces) = c.call(1, Method::GET, "/api/v1/namespaces", ADMIN_KEY, None).await?;
        let (_, entries) =
            c.call(1, Method::GET, "/api/v1/namespaces/bad/config?includeValues=true", ADMIN_KEY, None).await?;
        Result::Ok((audit, namespaces, entries))
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
        let mut req = c.request(1, method.clone(), &path)?.bearer_auth(ADMIN_KEY);
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

//! TLS: three real nodes serving the client API and Raft RPC over rustls with a per-run test
//! CA. Replication, forwarding from a follower and snapshot-free catch-up all cross TLS; a
//! client that does not trust the CA, and plain HTTP, are refused; shutdown stays orderly.

use std::path::Path;
use std::time::Duration;

use confman_client::{Client, Error};
use confman_tests::cluster::{ADMIN_KEY, CLUSTER_TOKEN, Cluster};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const BIN: &str = env!("CARGO_BIN_EXE_confman-node");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_replicates_and_serves_over_tls_only() -> Result<()> {
    let mut c = Cluster::start_tls(Path::new(BIN), 3, &[]).await?;
    let all = [1, 2, 3];
    let leader = c.wait_leader(&all, &all).await?;
    let follower = all.iter().copied().find(|id| *id != leader).ok_or("no follower")?;
    let ca = c.tls.as_ref().ok_or("no certificates")?.ca_pem.clone();
    let url = c.url(follower)?;
    assert!(url.starts_with("https://"), "{url}");

    // Writes through a follower: forwarded to the leader over TLS, replicated over TLS.
    let client = Client::builder([url.clone()], ADMIN_KEY).trust_ca_pem(ca.clone()).build()?;
    client.put_namespace("app", "tls test", "tests").await?;
    for i in 0..10 {
        client.put("app", &format!("k{i}"), format!("v{i}").into_bytes(), None).await?;
    }
    // Every node holds the same state.
    let admin =
        Client::builder(all.iter().map(|id| c.url(*id)).collect::<std::result::Result<Vec<_>, _>>()?, CLUSTER_TOKEN)
            .trust_ca_pem(ca.clone())
            .build()?;
    let mut digests = Vec::new();
    for id in all {
        // Linearizable read on each node first: it has applied everything written above.
        let node = Client::builder([c.url(id)?], ADMIN_KEY).trust_ca_pem(ca.clone()).build()?;
        assert_eq!(node.get("app", "k9").await?.map(|e| e.value.to_vec()), Some(b"v9".to_vec()), "node {id}");
        digests.push(admin.digest_of(&c.url(id)?).await?);
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");

    // A client that does not trust the test CA is refused during the handshake.
    let untrusting = Client::builder([url.clone()], ADMIN_KEY).retry_for(Duration::ZERO).build()?;
    let refused = untrusting.get("app", "k1").await;
    assert!(matches!(refused, Err(Error::Transport(_))), "{refused:?}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = url.replacen("https://", "http://", 1);
    let plain_result = confman_client::http_builder().build()?.get(format!("{plain}/health")).send().await;
    assert!(plain_result.is_err(), "plain HTTP answered: {plain_result:?}");

    // Orderly shutdown over TLS: SIGTERM → exit 0; the others keep a leader and the data.
    let status = c.terminate(leader, Duration::from_secs(60)).await?;
    assert!(status.success(), "{status:?}");
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    c.wait_leader(&rest, &rest).await?;
    let survivor = Client::builder([c.url(rest[0])?], ADMIN_KEY).trust_ca_pem(ca).build()?;
    assert_eq!(survivor.get("app", "k0").await?.map(|e| e.value.to_vec()), Some(b"v0".to_vec()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() -> Result<()> {
    let c = Cluster::start_tls(Path::new(BIN), 1, &["--tls-reload-ms", "200"]).await?;
    let certs = c.tls.clone().ok_or("no certificates")?;
    let by_ip = c.url(1)?;
    let port = by_ip.rsplit(':').next().ok_or("no port")?.to_string();
    let by_name = format!("https://localhost:{port}");
    let client = |url: &str| {
        Client::builder([url.to_string()], ADMIN_KEY)
            .trust_ca_pem(certs.ca_pem.clone())
            .retry_for(Duration::ZERO)
            .resolve("localhost", std::net::Ipv4Addr::LOCALHOST.into())
            .build()
    };
    client(&by_ip)?.put_namespace("app", "reload", "tests").await?;

    // The renewal (same CA) names only `localhost`: once it is served, the IP no longer
    // matches the certificate, and the host name does. Written in place, as the kubelet does.
    let dir = certs.cert.parent().ok_or("no cert dir")?;
    confman_tests::certs::issue(&certs.authority, dir, &["localhost"])?;
    let mut served = false;
    for _ in 0..300 {
        if client(&by_ip)?.get("app", "x").await.is_err() {
            served = true;
            break;
        }
        // The node re-reads the files every 200 ms: poll the observable until it flips (bounded).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the renewed certificate was never served");
    assert_eq!(client(&by_name)?.get("app", "x").await?, None, "the renewed certificate is valid for localhost");
    let log = std::fs::read_to_string(&c.nodes[&1].log_path)?;
    assert!(log.contains("TLS certificate reloaded"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_system_without_ca_roots_starts() -> Result<()> {
    // Like a minimal container image: no CA bundle anywhere. The node must still start (its
    // HTTP clients fall back to "no roots"), serve plain HTTP and stop on SIGTERM.
    let dir = tempfile::tempdir()?;
    let port = confman_tests::cluster::free_port()?;
    let mut node = tokio::process::Command::new(BIN)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path().join("data"))
        .env_clear()
        .env("SSL_CERT_FILE", dir.path().join("none.pem"))
        .env("SSL_CERT_DIR", dir.path().join("none"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let http = confman_client::http_builder().timeout(Duration::from_secs(2)).build()?;
    let mut ready = false;
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/health/ready")).send().await
            && r.status().is_success()
        {
            ready = true;
            break;
        }
        // No event marks the listener being up: poll the observable (bounded).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the node never became ready without CA roots");
    let pid = node.id().ok_or("node exited")?;
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    let status = tokio::time::timeout(Duration::from_secs(60), node.wait()).await??;
    assert!(status.success(), "{status:?}");
    Ok(())
}

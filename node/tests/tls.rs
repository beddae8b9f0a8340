//! TLS: real nodes serving the client API and Raft RPC over rustls with a per-run test CA.
//! Replication, forwarding from a follower and the catch-up of a restarted follower all cross
//! TLS, and the catch-up is shown to come from the log (no node sent, received or installed a
//! snapshot). A client that does not trust the CA fails certificate verification (the cause is
//! checked: an unknown issuer), plain HTTP on the TLS port gets no HTTP answer, a renewed
//! certificate (with a name the old one lacks) is served without a restart, and shutdown stays
//! orderly.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use confman_client::{Client, Error};
use confman_tests::cluster::{Cluster, free_ports, private_loopback};
use rustls::CertificateError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const BIN: &str = env!("CARGO_BIN_EXE_confman-node");

use confman_tests::certs::certificate_error;

/// The certificate-verification failure behind a client call's error (a transport error only).
fn refused_certificate<T: std::fmt::Debug>(r: &std::result::Result<T, Error>) -> Option<CertificateError> {
    match r {
        Err(Error::Transport(e)) => certificate_error(e),
        _ => None,
    }
}

/// Does a TLS handshake with `addr` as `name`, trusting only `ca_pem`, and returns the
/// end-entity certificate the node served; the inner error is the handshake's (e.g. the served
/// certificate does not name `name`).
async fn served_certificate(
    ca_pem: &str,
    addr: SocketAddr,
    name: &str,
) -> Result<std::result::Result<CertificateDer<'static>, std::io::Error>> {
    confman_client::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = match connector.connect(ServerName::try_from(name.to_string())?, tcp).await {
        Ok(tls) => tls,
        Err(e) => return Ok(Err(e)),
    };
    let leaf = tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()).ok_or("no peer certificate")?;
    Ok(Ok(leaf.clone().into_owned()))
}

/// A figure of `/api/v1/cluster` of node `id` (`None` when absent).
async fn figure(c: &Cluster, id: u64, pointer: &str) -> Result<Option<u64>> {
    Ok(c.cluster_info(id).await?.pointer(pointer).and_then(serde_json::Value::as_u64))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_replicates_catches_up_and_serves_over_tls_only() -> Result<()> {
    let mut c = Cluster::start_tls(Path::new(BIN), 3, &[]).await?;
    let all = [1, 2, 3];
    let leader = c.wait_leader(&all, &all).await?;
    let follower = all.iter().copied().find(|id| *id != leader).ok_or("no follower")?;
    let other = all.iter().copied().find(|id| *id != leader && *id != follower).ok_or("no second follower")?;
    let ca = c.tls.as_ref().ok_or("no certificates")?.ca_pem.clone();
    let url = c.url(follower)?;
    assert!(url.starts_with("https://"), "{url}");

    // Writes through a follower: forwarded to the leader over TLS, replicated over TLS.
    let client = Client::builder([url.clone()], &c.keys.admin).trust_ca_pem(ca.clone()).build()?;
    client.put_namespace("app", "tls test", "tests").await?;
    for i in 0..10 {
        client.put("app", &format!("k{i}"), format!("v{i}").into_bytes(), None).await?;
    }

    // Catch-up over TLS: the other follower is down while ten more writes commit, then comes
    // back and gets them from the leader's log.
    let applied_before = figure(&c, other, "/appliedIndex").await?.ok_or("no appliedIndex")?;
    c.kill(other)?;
    for i in 10..20 {
        client.put("app", &format!("k{i}"), format!("v{i}").into_bytes(), None).await?;
    }
    let target = figure(&c, leader, "/commitIndex").await?.ok_or("no commitIndex on the leader")?;
    assert!(target >= applied_before + 10, "node {other} missed the writes: {applied_before} → {target}");
    c.spawn(other)?;
    c.wait_all_ready(&[other]).await?;
    c.poll(&format!("node {other} to apply up to {target}"), Duration::from_secs(60), || {
        let c = &c;
        // A failed call (the node is still starting) means "not yet", not a failure.
        async move {
            Ok(c.cluster_info(other).await.is_ok_and(|i| i["appliedIndex"].as_u64().is_some_and(|a| a >= target)))
        }
    })
    .await?;
    // The client's one endpoint and the leader stayed up throughout: not one attempt was
    // repeated (no 503, no failed connection).
    assert_eq!(client.retries(), Default::default(), "retries while the leader had a quorum");

    // Every node holds the same state.
    let admin =
        Client::builder(all.iter().map(|id| c.url(*id)).collect::<std::result::Result<Vec<_>, _>>()?, &c.keys.token)
            .trust_ca_pem(ca.clone())
            .build()?;
    let mut digests = Vec::new();
    for id in all {
        // Linearizable read on each node first: it has applied everything written above.
        let node = Client::builder([c.url(id)?], &c.keys.admin).trust_ca_pem(ca.clone()).build()?;
        assert_eq!(node.get("app", "k19").await?.map(|e| e.value.to_vec()), Some(b"v19".to_vec()), "node {id}");
        digests.push(admin.digest_of(&c.url(id)?).await?);
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    // The catch-up came from the log: no snapshot was sent, received or installed anywhere.
    for id in all {
        for field in ["sent", "received", "installs"] {
            let n = figure(&c, id, &format!("/snapshots/{field}")).await?;
            assert_eq!(n, Some(0), "node {id}: snapshots {field}");
        }
    }

    // A client that does not trust the test CA is refused during the handshake, because the
    // certificate's issuer is unknown to it (not for any other reason).
    let untrusting = Client::builder([url.clone()], &c.keys.admin).retry_for(Duration::ZERO).build()?;
    let refused = untrusting.get("app", "k1").await;
    assert!(
        matches!(refused_certificate(&refused), Some(CertificateError::UnknownIssuer)),
        "expected an unknown-issuer verification failure: {refused:?}"
    );
    // Plain HTTP on the TLS port: the connection is accepted, but no HTTP answer comes back.
    let plain = url.replacen("https://", "http://", 1);
    let plain_result = confman_client::http_builder().build()?.get(format!("{plain}/health")).send().await;
    assert!(plain_result.as_ref().is_err_and(|e| !e.is_connect()), "plain HTTP: {plain_result:?}");

    // Orderly shutdown over TLS: SIGTERM → exit 0; the others keep a leader and the data.
    let leader = c.wait_leader(&all, &all).await?;
    let status = c.terminate(leader, Duration::from_secs(60)).await?;
    assert!(status.success(), "{status:?}");
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    c.wait_leader(&rest, &rest).await?;
    let survivor = Client::builder([c.url(rest[0])?], &c.keys.admin).trust_ca_pem(ca).build()?;
    assert_eq!(survivor.get("app", "k0").await?.map(|e| e.value.to_vec()), Some(b"v0".to_vec()));
    Ok(())
}

/// A name only the renewed certificate carries.
const RENEWED: &str = "renewed.confman.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() -> Result<()> {
    let c = Cluster::start_tls(Path::new(BIN), 1, &["--tls-reload-ms", "200"]).await?;
    let certs = c.tls.clone().ok_or("no certificates")?;
    let addr: SocketAddr = c.nodes[&1].addr.parse()?;
    let port = addr.port();
    let client = |url: String| {
        Client::builder([url], &c.keys.admin)
            .trust_ca_pem(certs.ca_pem.clone())
            .retry_for(Duration::ZERO)
            .resolve(RENEWED, c.ip.into())
            .build()
    };
    client(c.url(1)?)?.put_namespace("app", "reload", "tests").await?;

    // Served now: the original certificate, which does not name RENEWED.
    let original = CertificateDer::from_pem_slice(certs.cert_pem.as_bytes())?;
    assert!(served_certificate(&certs.ca_pem, addr, "localhost").await?? == original, "the original is served");
    let before = served_certificate(&certs.ca_pem, addr, RENEWED).await?;
    assert!(
        matches!(
            before.as_ref().err().and_then(|e| certificate_error(e)),
            Some(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })
        ),
        "the original certificate must not be valid for {RENEWED}: {before:?}"
    );

    // The renewal (same CA) keeps the names and adds RENEWED. Written in place, as the kubelet
    // does; the node re-reads the files every 200 ms.
    let dir = certs.cert.parent().ok_or("no cert dir")?;
    let ip = c.ip.to_string();
    let renewal = confman_tests::certs::issue(&certs.authority, dir, &["localhost", "127.0.0.1", &ip, RENEWED])?;
    let renewed = CertificateDer::from_pem_slice(renewal.cert_pem.as_bytes())?;
    assert!(renewed != original, "the renewal is a different certificate");
    c.poll("a certificate other than the original to be served", Duration::from_secs(60), || {
        let (ca, original) = (certs.ca_pem.clone(), original.clone());
        // A failed connection or handshake (e.g. while the files are half written) means "not
        // yet"; the assertions after the poll check what is served.
        async move {
            let served = served_certificate(&ca, addr, "localhost").await;
            Ok(served.is_ok_and(|served| served.is_ok_and(|served| served != original)))
        }
    })
    .await?;
    // Exactly the renewal, byte for byte, and it is valid for the new name.
    assert!(served_certificate(&certs.ca_pem, addr, "localhost").await?? == renewed, "the renewal is served");
    assert!(served_certificate(&certs.ca_pem, addr, RENEWED).await?? == renewed, "the renewal is served as {RENEWED}");
    // The API answers a client that verifies the new name; the old names still verify.
    assert_eq!(client(format!("https://{RENEWED}:{port}"))?.get("app", "x").await?, None);
    assert_eq!(client(c.url(1)?)?.get("app", "x").await?, None);
    assert!(c.logged(1, "TLS certificate reloaded")?, "no reload logged");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_system_without_ca_roots_starts() -> Result<()> {
    // Like a minimal container image: no CA bundle anywhere. The node must still start (its
    // HTTP clients fall back to "no roots"), serve plain HTTP and stop on SIGTERM.
    let dir = tempfile::tempdir()?;
    // An address of its own (no other test listens on it), the port bound and released there.
    let ip = private_loopback();
    let port = *free_ports(ip, 1)?.first().ok_or("no port")?;
    let mut node = tokio::process::Command::new(BIN)
        .args(["--listen", &format!("{ip}:{port}"), "--data-dir"])
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
        if let Ok(r) = http.get(format!("http://{ip}:{port}/health/ready")).send().await
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

//! A node that cannot start says why and exits; it never hangs half-started (a started Raft
//! must be shut down, not dropped, or its log syncer is never joined).

use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const BIN: &str = env!("CARGO_BIN_EXE_confman-node");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_reported_and_the_node_exits() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let dir = tempfile::tempdir()?;
    let out = tokio::process::Command::new(BIN)
        .args(["--listen", &addr.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    // Bounded: a hang is the bug this test is about.
    let out =
        tokio::time::timeout(Duration::from_secs(60), out).await.map_err(|_| "the node hung instead of exiting")??;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("listen on {addr}")), "{stderr}");
    drop(taken);
    Ok(())
}

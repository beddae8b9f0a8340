//! Test harness and benchmark support for Confman: start real `confman-node` processes on
//! loopback ports, talk to them over HTTP, kill and restart them, and compute latency
//! statistics.

pub mod certs;
pub mod cluster;
pub mod etcd;
pub mod faults;
pub mod floors;
pub mod kube;
pub mod linearizability;
pub mod netns;
pub mod small_disk;
pub mod stats;

/// The `confman-node` binary a benchmark runs: `given`, or the one built next to the running
/// executable (cargo puts every binary of the workspace in one directory).
pub fn node_binary(given: Option<std::path::PathBuf>) -> std::io::Result<std::path::PathBuf> {
    match given {
        Some(b) => Ok(b),
        None => Ok(std::env::current_exe()?.with_file_name("confman-node")),
    }
}

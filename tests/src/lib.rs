//! Test harness and benchmark support for Confman: start real `confman-node` processes on
//! loopback ports, talk to them over HTTP, kill and restart them, and compute latency
//! statistics.

pub mod certs;
pub mod cluster;
pub mod etcd;
pub mod floors;
pub mod kube;
pub mod stats;

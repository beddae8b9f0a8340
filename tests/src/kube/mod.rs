//! A Kubernetes API stand-in ([`api::FakeApiServer`]) for what the real cluster of
//! `scripts/k8s-cluster` cannot do on demand: the operator binary's Lease handling against an
//! API whose answers a test controls. Everything Kubernetes itself does (StatefulSet rollouts,
//! garbage collection, validation, RBAC, eviction) is tested on the real cluster
//! (`operator/tests/real_cluster.rs`).

pub mod api;
pub mod managed;

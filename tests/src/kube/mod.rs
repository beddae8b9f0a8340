//! A Kubernetes stand-in for end-to-end operator tests: an in-process API server
//! ([`api::FakeApiServer`]) and a pod simulator ([`sim::PodSim`]) that runs real
//! `confman-node` processes for StatefulSet pods on loopback addresses.

pub mod api;
pub mod managed;
pub mod sim;

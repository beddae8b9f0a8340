//! Confman node: a Raft-replicated configuration store on openraft and RocksDB with an HTTP
//! API. Modules by job: `model` (data types and name rules), `command` (replicated
//! operations), `store` (RocksDB layout, reads, apply), `raft` (everything openraft-facing),
//! `changes` (which namespaces changed, for watches), `api` (HTTP), `auth` (API keys and
//! roles), `cluster_token` (the shared peer token, several during a rotation), `config`
//! (flags, environment and files; their keys, the tuning table and its invariants are
//! `confman-contract`'s), `metrics`, `server` (startup and ordered shutdown), `listener` (the
//! accept loop, connection limits and timeouts), `tls` (rustls for the listener, the CAs peer
//! calls trust; the HTTP client setup is `confman-http`'s, shared with `confman-client`),
//! `lost_member` (a member that lost its data does not rejoin under its id), `files` (durable
//! private files), `disk_space` (the free-space reserve that keeps Raft from a failed write), `malloc` (glibc tuning for MB-sized buffers). The design is described in
//! the repository's `docs/`.

pub mod api;
pub mod auth;
pub mod changes;
pub mod cluster_token;
pub mod command;
pub mod config;
pub mod disk_space;
pub mod files;
pub mod listener;
pub mod lost_member;
pub mod malloc;
pub mod metrics;
pub mod model;
pub mod raft;
pub mod server;
pub mod store;
pub mod tls;

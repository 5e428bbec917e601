//! cleanslate: a fresh RabbitMQ and etcd state for every Helm deploy of a dev or staging
//! environment, and a gate that keeps pods from starting before it is done.
//!
//! A Helm hook Job runs `cleanslate purge`: it purges the selected RabbitMQ queues through the
//! management HTTP API and deletes the selected etcd prefixes in one transaction, side by side,
//! with retries under one deadline, then records the outcome in a marker ConfigMap. Each gated pod
//! runs `cleanslate gate` as an init container, which watches that ConfigMap until it says this
//! revision (or a newer one) was cleaned. `cleanslate plan` shows what a purge would do. With
//! quiesce, the purge first stops the listed workloads and `cleanslate resume` starts them again.
//!
//! # Layout
//!
//! - [`config`]: `CLEANSLATE_*` variables → validated structs; secrets redacted.
//! - [`error`]: the one typed error: the kind of a failure, carried through anyhow.
//! - [`exit`]: the sysexits-style exit codes; only `main` maps kinds and signals to them.
//! - [`telemetry`]: JSON or text logs on stdout, level from `RUST_LOG`.
//! - [`retry`]: exponential backoff with jitter under a deadline.
//! - [`rabbitmq`]: management API: the client, reads, selection (named, pattern, dead letters reported), purge.
//! - [`dead_letters`]: which queues dead letters provably reach (pure routing rules).
//! - [`policies`]: which policy applies to a queue, for listings without policy columns.
//! - [`etcd`]: key ranges, protected prefixes, the delete transaction.
//! - [`kube_error`]: a failed Kubernetes API call and how callers sort it.
//! - [`kube`]: the Kubernetes API (kube-rs): the marker ConfigMap, a workload's annotations and scale, pods.
//! - [`status`]: `cleanslate status`, the last run and what is still stopped, for people and scripts.
//! - [`marker`]: the marker's data and the gate's rules (pure).
//! - [`quiesce`]: stop the listed workloads before a purge, wait for their pods, put them back.
//! - [`purge`]: the purge and plan runs.
//! - [`tally`]: what a run has committed so far, kept when a signal stops it.
//! - [`shutdown`]: SIGTERM/SIGINT, handed to the runs that must clean up before exiting.
//! - [`gate`]: read, then watch, until the marker allows this revision.

pub mod cli;
pub mod config;
pub mod dead_letters;
pub mod error;
pub mod etcd;
pub mod events;
pub mod exit;
pub mod gate;
pub mod kube;
pub mod kube_error;
pub mod marker;
pub mod policies;
pub mod purge;
pub mod quiesce;
pub mod rabbitmq;
pub mod release;
pub mod retry;
pub mod shutdown;
pub mod status;
pub mod tally;
pub mod telemetry;
pub mod termination;
pub mod text;

//! flink-gitops: keeps an Apache Flink session cluster in step with a Git repository of signed job specs.
#![deny(missing_docs)]

pub mod batch;
pub mod cli;
pub mod compat;
pub mod config;
pub mod flink;
pub mod git;
pub mod limits;
pub mod notify;
pub mod plan;
pub mod reconcile;
pub mod revision;
pub mod runner;
pub mod secrets;
pub mod service;
pub mod spec;
pub mod state;
/// The fake Flink: for tests and benchmarks only (the `fake-flink` feature, which `cargo test`
/// turns on through the dev-dependency on this crate), never in the release binary.
#[cfg(any(test, feature = "fake-flink"))]
pub mod testing;
pub mod trust;
pub mod util;

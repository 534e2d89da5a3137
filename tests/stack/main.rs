//! The full stack around the exporter (the harness is `tests/common/`): one
//! test binary, its tests split by subject.

mod alerting;
#[path = "../common/mod.rs"]
mod common;
mod dashboards;

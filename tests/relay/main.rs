//! `vitals relay` against real peers (the harness is `tests/common/`): one
//! test binary, its tests split by subject.

#[path = "../common/mod.rs"]
mod common;
mod config;
mod delivery;
mod durability;

//! Sources: each owns its loop, turns what it reads into samples and sends
//! them in batches on the bounded ingest channel. A failing source reports
//! itself through self-metrics and never fails a scrape.

pub mod process;
pub mod system;

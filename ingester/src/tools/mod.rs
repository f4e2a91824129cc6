//! One-shot commands of `spillway-ingester` beside `run`: they share the
//! configuration and the ClickHouse client, not the pipeline.

pub mod loadgen;
pub mod migrate;
pub mod replay;
pub mod retention;
pub mod topics;

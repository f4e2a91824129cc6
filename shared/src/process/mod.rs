//! The process plumbing both binaries share (feature `process`): logging,
//! signals and the HTTP listener for `/health`, `/ready` and `/metrics`.
//! Each binary brings its own routes and metrics; how a process starts,
//! logs, listens and stops is the same for both.

mod http;
mod logging;
mod signals;

pub use http::serve;
pub use logging::{LogFormat, init_logging};
pub use signals::{Signal, stop_on_signal, stop_on_signals};

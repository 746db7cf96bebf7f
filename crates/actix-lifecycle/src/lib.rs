//! Connection lifecycle for actix services.
//!
//! Actors that own the descriptors a process was given (`FdBroker`), serve
//! them (`ListenerActor`), track every live connection by protocol and
//! listener (`ConnectionRegistry`, with prometheus gauges), and shut down
//! gracefully within bounds (`Shutdown`).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod phase;

pub use phase::{Phase, PhaseController, ShutdownHandle};

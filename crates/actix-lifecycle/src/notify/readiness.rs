//! Readiness: every listener of the lifecycle accepts.

use std::time::{Duration, Instant};

use actix::Addr;
use slog::{warn, Logger};

use crate::broker::{FdBroker, GetInventory};
use crate::listener::{GetListenerInfo, ListenerActor};
use crate::phase::ShutdownHandle;

/// How often readiness is polled while listeners start.
const READY_POLL: Duration = Duration::from_millis(20);
/// After this long without readiness, the listeners still missing are logged.
const READY_SLOW: Duration = Duration::from_secs(5);

/// Waits until every inventory listener was taken and every given listener
/// accepts; `Err` says why that will not happen.
pub(super) async fn wait_until_ready(
    broker: Addr<FdBroker>,
    listeners: Vec<Addr<ListenerActor>>,
    shutdown: ShutdownHandle,
    log: Logger,
) -> Result<(), String> {
    let began = Instant::now();
    let mut warned = false;
    loop {
        if shutdown.is_shutting_down() {
            return Err("shutdown began before every listener accepted".to_owned());
        }
        let report = broker
            .send(GetInventory)
            .await
            .map_err(|_| "the FdBroker stopped before every listener was taken".to_owned())?;
        let pending: Vec<&str> = report
            .listeners
            .iter()
            .filter(|l| !l.taken)
            .map(|l| l.spec.name())
            .collect();
        if pending.is_empty() {
            break;
        }
        if !warned && began.elapsed() >= READY_SLOW {
            warn!(log, "still not ready: listeners of the inventory nobody serves; \
                start a ListenerActor for each or send CloseUnclaimed";
                "listeners" => pending.join(","));
            warned = true;
        }
        actix_rt::time::sleep(READY_POLL).await;
    }
    for (i, listener) in listeners.iter().enumerate() {
        loop {
            if shutdown.is_shutting_down() {
                return Err("shutdown began before every listener accepted".to_owned());
            }
            let info = listener.send(GetListenerInfo).await.map_err(|_| {
                format!(
                    "listener actor #{} given to the notifier stopped before it accepted \
                     (its error is logged above)",
                    i + 1
                )
            })?;
            if info.accepting {
                break;
            }
            actix_rt::time::sleep(READY_POLL).await;
        }
    }
    Ok(())
}

//! `Lifecycle::ready`: every served listener holds its socket, what nobody
//! claimed is closed, and the inventory is reported.

use std::sync::{Arc, Mutex, PoisonError};

use lifecycle_handoff::ListenAddress;
use tokio::sync::oneshot;

use crate::broker::InventoryReport;
use crate::error::ListenerError;

/// One listener that serves, in a [`Ready`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServedListener {
    /// The listener's name (as in the inventory).
    pub name: String,
    /// The protocol label it serves.
    pub protocol: String,
    /// The address its socket is bound to.
    pub address: ListenAddress,
}

/// The reply of [`Lifecycle::ready`](crate::Lifecycle::ready): the service
/// serves every listener it was asked to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ready {
    /// Every listener served, in the order it was started or taken.
    pub listeners: Vec<ServedListener>,
    /// How many descriptors nobody claimed were closed (each logged).
    pub closed_unclaimed: usize,
    /// The broker's inventory after the close.
    pub inventory: InventoryReport,
}

struct Pending {
    name: String,
    protocol: String,
    rx: oneshot::Receiver<Result<ListenAddress, ListenerError>>,
}

#[derive(Default)]
struct State {
    pending: Vec<Pending>,
    served: Vec<ServedListener>,
}

/// The listeners a lifecycle started or handed out, shared by its clones.
#[derive(Clone, Default)]
pub(crate) struct Served(Arc<Mutex<State>>);

impl Served {
    /// A listener actor about to start: its report sender.
    pub(crate) fn expect(
        &self,
        name: &str,
        protocol: &str,
    ) -> oneshot::Sender<Result<ListenAddress, ListenerError>> {
        let (tx, rx) = oneshot::channel();
        self.lock().pending.push(Pending {
            name: name.to_owned(),
            protocol: protocol.to_owned(),
            rx,
        });
        tx
    }

    /// A listener the application took itself and serves.
    pub(crate) fn taken(&self, listener: ServedListener) {
        self.lock().served.push(listener);
    }

    /// Waits for every pending listener; the first failure (in start order)
    /// is returned with the listener's name.
    pub(crate) async fn wait(&self) -> Result<Vec<ServedListener>, (String, ListenerError)> {
        let pending = std::mem::take(&mut self.lock().pending);
        let mut failed = None;
        for p in pending {
            let result = p.rx.await.unwrap_or_else(|_| {
                Err(ListenerError::Stopped {
                    name: p.name.clone(),
                })
            });
            match result {
                Ok(address) => self.lock().served.push(ServedListener {
                    name: p.name,
                    protocol: p.protocol,
                    address,
                }),
                Err(e) if failed.is_none() => failed = Some((p.name, e)),
                Err(_) => {}
            }
        }
        match failed {
            Some(f) => Err(f),
            None => Ok(self.lock().served.clone()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

//! Listener claiming in inherited and systemd modes: a spec takes the
//! passed listener of its name, else one bound to its address (unnamed
//! first), and renames it; nothing matching is an error with the fix for
//! the mode.

use crate::error::{Error, Result};
use crate::inventory::PassedListener;
use crate::mode::Mode;
use crate::spec::ListenerSpec;

use super::{list, Handoff};

impl Handoff {
    pub(super) fn take_listener(&mut self, spec: &ListenerSpec) -> Result<PassedListener> {
        match self
            .find_by_name(spec)
            .or_else(|| self.find_by_address(spec))
        {
            Some(index) => Ok(claimed(self.inventory.listeners.remove(index), spec)),
            None => Err(self.missing_listener(spec)),
        }
    }

    /// The passed listener named like `spec` whose address `spec` accepts.
    fn find_by_name(&self, spec: &ListenerSpec) -> Option<usize> {
        self.inventory
            .listeners
            .iter()
            .position(|l| l.spec.name() == spec.name() && spec.address().accepts(l.spec.address()))
    }

    /// A passed listener whose address `spec` accepts, unnamed ones first
    /// (see [`is_unnamed`]).
    fn find_by_address(&self, spec: &ListenerSpec) -> Option<usize> {
        let listeners = &self.inventory.listeners;
        let at_address = |l: &&PassedListener| spec.address().accepts(l.spec.address());
        listeners
            .iter()
            .position(|l| at_address(&l) && is_unnamed(l))
            .or_else(|| listeners.iter().position(|l| at_address(&l)))
    }

    /// Why nothing passed matches `spec`, with the fix for this mode.
    fn missing_listener(&self, spec: &ListenerSpec) -> Error {
        let listeners = &self.inventory.listeners;
        let available = || list(listeners.iter().map(|l| l.spec.to_string()));
        let same_name = listeners.iter().find(|l| l.spec.name() == spec.name());
        match (self.mode(), same_name) {
            (Mode::Systemd, Some(other)) => Error::ActivatedSocketMismatch {
                name: spec.name().to_owned(),
                passed: other.spec.address().to_string(),
                requested: spec.address().to_string(),
            },
            (Mode::Systemd, None) => Error::NoActivatedSocket {
                name: spec.name().to_owned(),
                address: spec.address().to_string(),
                available: available(),
            },
            (_, Some(other)) => Error::SpecMismatch {
                name: spec.name().to_owned(),
                passed: other.spec.to_string(),
                requested: spec.to_string(),
            },
            (mode, None) => Error::NoSuchListener {
                spec: spec.to_string(),
                mode,
                available: available(),
            },
        }
    }

    /// Takes one passed listener per spec, in the order of `specs`, each
    /// renamed to its spec's name: first every match by name, then, for the
    /// specs still without one, a match by address (so an unnamed socket
    /// never goes to a spec whose named socket is also passed). On an error
    /// nothing is taken.
    pub(super) fn claim_all(&mut self, specs: &[ListenerSpec]) -> Result<Vec<PassedListener>> {
        let mut slots: Vec<Option<PassedListener>> = specs.iter().map(|_| None).collect();
        for (slot, spec) in slots.iter_mut().zip(specs) {
            if let Some(index) = self.find_by_name(spec) {
                *slot = Some(self.inventory.listeners.remove(index));
            }
        }
        let mut failed = None;
        for (slot, spec) in slots.iter_mut().zip(specs) {
            if slot.is_some() {
                continue;
            }
            match self.find_by_address(spec) {
                Some(index) => *slot = Some(self.inventory.listeners.remove(index)),
                None => {
                    failed = Some(self.missing_listener(spec));
                    break;
                }
            }
        }
        if let Some(err) = failed {
            // Put back what was taken, as it was, so nothing is lost.
            let taken: Vec<PassedListener> = slots.into_iter().flatten().collect();
            self.inventory.listeners.splice(0..0, taken);
            return Err(err);
        }
        Ok(slots
            .into_iter()
            .zip(specs)
            .filter_map(|(slot, spec)| slot.map(|l| claimed(l, spec)))
            .collect())
    }
}

/// True for a passed listener named by its address: an unnamed systemd
/// socket (`LISTEN_FDNAMES` absent, or the name empty or `unknown`) or a mox
/// entry. Every address's text holds a `:` and systemd refuses a `:` in
/// `FileDescriptorName=`, so a name given by a socket unit is never of this
/// form.
fn is_unnamed(listener: &PassedListener) -> bool {
    listener.spec.name() == listener.spec.address().to_string()
}

/// `listener`, claimed by `spec`: it takes the spec's name (the name the
/// program, and an `FdBroker`, look it up by) and keeps the address it is
/// bound to.
fn claimed(listener: PassedListener, spec: &ListenerSpec) -> PassedListener {
    PassedListener {
        spec: ListenerSpec::new(spec.name(), listener.spec.address().clone())
            .with_backlog(listener.spec.backlog()),
        fd: listener.fd,
    }
}

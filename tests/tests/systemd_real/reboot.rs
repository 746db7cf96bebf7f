//! The reboot: every rig boots a writable overlay of the cached root, so
//! powering the container off and booting the same root again is a reboot
//! of an installed machine. The enabled units come up (the socket-activated
//! service on its first connection) and deliver, and what was accepted
//! before is still in the spool.

use std::path::Path;
use std::time::Instant;

use lifecycle_tests::{loud, Container};

use crate::rig::{Rig, ACTIVATED, SOCKETS};

impl Rig {
    /// Powers the container off (systemd stops every unit) and boots the
    /// same root again.
    pub(crate) fn reboot(&mut self) {
        self.c.poweroff();
        let binds: Vec<(&Path, &str)> = (self.binds.iter())
            .map(|(host, inside)| (host.as_path(), inside.as_str()))
            .collect();
        let booted = Instant::now();
        self.c =
            Container::boot_writable(self.overlay.root(), &binds).unwrap_or_else(|e| panic!("{e}"));
        loud(&format!(
            "{}: rebooted in {:?} (init pid {})",
            self.unit,
            booted.elapsed(),
            self.c.init_pid()
        ));
    }
}

/// Enabled as the README installs it, the service is back after a reboot
/// and delivers; the messages from before are kept.
pub(crate) fn reboot_and_deliver(r: &mut Rig) {
    let enabled = if r.unit == ACTIVATED {
        SOCKETS[0]
    } else {
        r.unit
    };
    let state = r.c.sh(&format!("systemctl is-enabled {enabled}")).unwrap();
    assert_eq!(state.trim(), "enabled", "{enabled}");
    assert!(r.spool_has("first message"), "before the reboot");
    r.reboot();
    if r.unit == ACTIVATED {
        // Only its sockets start at boot; the first connection starts it.
        assert_eq!(r.prop("ActiveState"), "inactive", "{}", r.journal());
    } else {
        r.wait_active();
    }
    assert!(r.deliver("after the reboot"), "{}", r.journal());
    r.wait_active();
    assert!(r.spool_has("after the reboot"), "not in {}", r.spool);
    assert!(
        r.spool_has("first message"),
        "lost in the reboot: {}",
        r.spool
    );
}

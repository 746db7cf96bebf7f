//! `Lifecycle::from_handoff`: a privileged-mode inventory is not served by
//! a process that is still root, unless the adopter allows it.

use actix_lifecycle::{Handoff, Inventory, Lifecycle, LifecycleError, Mode};

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[actix::test]
async fn a_privileged_inventory_is_refused_as_root_unless_allowed() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let handoff = Handoff::from_inventory(Mode::Privileged, Inventory::default());
    let err = Lifecycle::from_handoff(handoff)
        .handle_signals(false)
        .start()
        .unwrap_err();
    assert!(matches!(err, LifecycleError::ServingAsRoot), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("drop_privileges_in_place") && msg.contains("allow_root"),
        "{msg}"
    );

    let handoff = Handoff::from_inventory(Mode::Privileged, Inventory::default());
    let allowed = Lifecycle::from_handoff(handoff)
        .allow_root(true)
        .handle_signals(false)
        .start();
    assert!(allowed.is_ok(), "{allowed:?}");

    // Other modes are the adopter's call.
    let handoff = Handoff::from_inventory(Mode::Immediate, Inventory::default());
    let immediate = Lifecycle::from_handoff(handoff)
        .handle_signals(false)
        .start();
    assert!(immediate.is_ok(), "{immediate:?}");
}

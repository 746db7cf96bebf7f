//! The `STATUS=` line: phase and live connections per listener.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::phase::Phase;
use crate::registry::RegistrySnapshot;

/// E.g. `running: 3 connections (imap 1, smtp 2)`, `starting: 0
/// connections`, `lame_duck: 2 connections (smtp 2)`, `draining: 1
/// connection (smtp 1)`, `stopped`.
pub(super) fn status_line(phase: Phase, ready: bool, snapshot: &RegistrySnapshot) -> String {
    let word = match phase {
        Phase::Running if !ready => "starting",
        Phase::Stopped => return "stopped".to_owned(),
        other => other.as_str(),
    };
    let mut per_listener: BTreeMap<&str, u64> = BTreeMap::new();
    for kind in snapshot.kinds.iter().filter(|k| k.live > 0) {
        *per_listener.entry(&kind.listener).or_default() += kind.live;
    }
    let total: u64 = per_listener.values().sum();
    let noun = if total == 1 {
        "connection"
    } else {
        "connections"
    };
    let mut line = format!("{word}: {total} {noun}");
    if !per_listener.is_empty() {
        line.push_str(" (");
        for (i, (listener, live)) in per_listener.iter().enumerate() {
            if i > 0 {
                line.push_str(", ");
            }
            let _ = write!(line, "{listener} {live}");
        }
        line.push(')');
    }
    line
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::registry::KindCount;

    fn kind(listener: &str, live: u64) -> KindCount {
        KindCount {
            protocol: Arc::from("p"),
            listener: Arc::from(listener),
            live,
            accepted: live,
            aborted: 0,
            refused: Default::default(),
            limits: Default::default(),
        }
    }

    #[test]
    fn lines() {
        let mut snap = RegistrySnapshot::default();
        assert_eq!(
            status_line(Phase::Running, false, &snap),
            "starting: 0 connections"
        );
        snap.kinds = vec![kind("smtp", 2), kind("imap", 1), kind("http", 0)];
        assert_eq!(
            status_line(Phase::Running, true, &snap),
            "running: 3 connections (imap 1, smtp 2)"
        );
        assert_eq!(
            status_line(Phase::LameDuck, true, &snap),
            "lame_duck: 3 connections (imap 1, smtp 2)"
        );
        snap.kinds = vec![kind("smtp", 1)];
        assert_eq!(
            status_line(Phase::Draining, true, &snap),
            "draining: 1 connection (smtp 1)"
        );
        assert_eq!(status_line(Phase::Stopped, true, &snap), "stopped");
    }
}

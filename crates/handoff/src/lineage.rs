//! Which generation a child is, and how the upgrades before it went: the
//! optional upgrade variables of the hand-off protocol.
//!
//! ```text
//! LIFECYCLE_READY_FD=6          the readiness channel, right after listeners and files
//! LIFECYCLE_GENERATION=3        1 for the first child, +1 per upgrade attempt
//! LIFECYCLE_UPGRADES_OK=1       upgrades that succeeded before this child started
//! LIFECYCLE_UPGRADES_FAILED=1   upgrades that failed before this child started
//! ```
//!
//! A serving child publishes them as metrics: the generation as a gauge and
//! `lifecycle_upgrades_total{result="ok"|"failed"}` starting from
//! [`Lineage::succeeded_including_self`] and [`Lineage::upgrades_failed`].
//! The counters are those of the parent when it started this child; later
//! outcomes (its own promotion, an upgrade that fails while it serves)
//! arrive as updates on the readiness channel
//! ([`ReadyChannel::recv_update`](crate::ReadyChannel::recv_update)).

use std::ffi::{OsStr, OsString};
use std::os::fd::RawFd;

use crate::env::{parse_number, VarNames, FIRST_PASSED_FD};
use crate::environment::Environment;
use crate::error::{Error, Result};

/// A child's generation and the upgrade counters of its parent at the time
/// the child was started.
///
/// ```
/// use std::collections::BTreeMap;
/// use lifecycle_handoff::{Lineage, VarNames};
///
/// let lineage = Lineage { generation: 3, upgrades_ok: 1, upgrades_failed: 1 };
/// let mut env: BTreeMap<_, _> = lineage.encode(&VarNames::default()).into_iter().collect();
/// assert_eq!(Lineage::decode(&mut env, &VarNames::default())?, Some(lineage));
/// assert!(env.is_empty());
/// # Ok::<(), lifecycle_handoff::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lineage {
    /// 1 for the first child of a parent, one more per upgrade attempt.
    pub generation: u64,
    /// Upgrades that succeeded before this child was started.
    pub upgrades_ok: u64,
    /// Upgrades that failed before this child was started.
    pub upgrades_failed: u64,
}

impl Lineage {
    /// The first child: generation 1, no upgrades yet.
    pub const FIRST: Lineage = Lineage {
        generation: 1,
        upgrades_ok: 0,
        upgrades_failed: 0,
    };

    /// Upgrades that succeeded up to and including the one that made this
    /// child the serving one: every generation after the first was started
    /// by an upgrade, which succeeded once the child serves.
    ///
    /// ```
    /// use lifecycle_handoff::Lineage;
    ///
    /// assert_eq!(Lineage::FIRST.succeeded_including_self(), 0);
    /// let third = Lineage { generation: 3, upgrades_ok: 1, upgrades_failed: 0 };
    /// assert_eq!(third.succeeded_including_self(), 2);
    /// ```
    pub fn succeeded_including_self(&self) -> u64 {
        if self.generation > 1 {
            self.upgrades_ok.saturating_add(1)
        } else {
            self.upgrades_ok
        }
    }

    /// `<PREFIX>_GENERATION`, `_UPGRADES_OK` and `_UPGRADES_FAILED`.
    pub fn encode(&self, names: &VarNames) -> Vec<(OsString, OsString)> {
        vec![
            (
                names.generation().into(),
                self.generation.to_string().into(),
            ),
            (
                names.upgrades_ok().into(),
                self.upgrades_ok.to_string().into(),
            ),
            (
                names.upgrades_failed().into(),
                self.upgrades_failed.to_string().into(),
            ),
        ]
    }

    /// Reads and removes the three variables. `None` when none is set (a
    /// parent that does not upgrade); all three are required once one is.
    pub fn decode(env: &mut impl Environment, names: &VarNames) -> Result<Option<Lineage>> {
        let vars = [
            names.generation(),
            names.upgrades_ok(),
            names.upgrades_failed(),
        ];
        let values = vars.map(|name| env.var(name));
        for name in vars {
            env.remove_var(name);
        }
        parse_lineage(names, values)
    }
}

fn parse_lineage(names: &VarNames, values: [Option<OsString>; 3]) -> Result<Option<Lineage>> {
    if values.iter().all(Option::is_none) {
        return Ok(None);
    }
    let [generation, ok, failed] = values;
    let required = |var: &str, value: Option<OsString>| {
        value.ok_or_else(|| Error::MissingVariable {
            var: var.to_owned(),
            fix: "the upgrade variables GENERATION, UPGRADES_OK and UPGRADES_FAILED are set \
                  together by the parent; set all three or none",
        })
    };
    let generation = required(names.generation(), generation)?;
    let generation = parse_number(names.generation(), &generation, "generation number")?;
    if generation == 0 {
        return Err(Error::NotANumber {
            var: names.generation().to_owned(),
            value: "0".to_owned(),
            expected: "generation number (1 or more)",
            fix: "generations count from 1; let the parent write it",
        });
    }
    let ok = required(names.upgrades_ok(), ok)?;
    let ok = parse_number(names.upgrades_ok(), &ok, "upgrade count")?;
    let failed = required(names.upgrades_failed(), failed)?;
    let failed = parse_number(names.upgrades_failed(), &failed, "upgrade count")?;
    Ok(Some(Lineage {
        generation,
        upgrades_ok: ok,
        upgrades_failed: failed,
    }))
}

/// The upgrade variables as read (and removed) before the core hand-off
/// is decoded, so that they are gone even when the hand-off is refused.
#[derive(Debug, Default)]
pub(crate) struct UpgradeVars {
    ready_fd: Option<OsString>,
    lineage: [Option<OsString>; 3],
}

impl UpgradeVars {
    /// Reads and removes all four upgrade variables.
    pub(crate) fn take(env: &mut impl Environment, names: &VarNames) -> Self {
        let [ready, generation, ok, failed] = names.upgrade_vars().map(|name| env.var(name));
        for name in names.upgrade_vars() {
            env.remove_var(name);
        }
        UpgradeVars {
            ready_fd: ready,
            lineage: [generation, ok, failed],
        }
    }

    /// The lineage, if the parent wrote one.
    pub(crate) fn lineage(&self, names: &VarNames) -> Result<Option<Lineage>> {
        parse_lineage(names, self.lineage.clone())
    }

    /// The ready descriptor, if announced; it must be the one right after
    /// the `passed` listeners and files.
    pub(crate) fn ready_fd(&self, names: &VarNames, passed: usize) -> Result<Option<RawFd>> {
        let Some(value) = &self.ready_fd else {
            return Ok(None);
        };
        parse_ready_fd(names.ready_fd(), value, passed).map(Some)
    }
}

fn parse_ready_fd(var: &str, value: &OsStr, passed: usize) -> Result<RawFd> {
    let number = parse_number(var, value, "descriptor number")?;
    let expected = RawFd::try_from(passed)
        .ok()
        .and_then(|n| n.checked_add(FIRST_PASSED_FD));
    match expected {
        Some(expected) if u64::try_from(expected).ok() == Some(number) => Ok(expected),
        _ => Err(Error::ReadyFdMisplaced {
            var: var.to_owned(),
            value: number,
            passed,
        }),
    }
}

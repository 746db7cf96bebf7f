//! The message of each [`Error`]: every variant belongs to one area, whose
//! file writes it. Each message names the culprit (variable, entry, fd,
//! path or user) and what to do about it.

use std::fmt;

use super::{env, fd, lookup, open, privilege, process, ready, Error};

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error as E;
        match self {
            E::MissingVariable { .. }
            | E::NotUtf8 { .. }
            | E::NotANumber { .. }
            | E::EmptyEntry { .. }
            | E::BadEscape { .. }
            | E::BadEntry { .. }
            | E::UnknownNetwork { .. }
            | E::BadAddress { .. }
            | E::BadName { .. }
            | E::DuplicateName { .. }
            | E::FdCountMismatch { .. }
            | E::WrongParent { .. }
            | E::WrongListenPid { .. }
            | E::FdNamesCount { .. }
            | E::BadPrefix { .. } => env::fmt(self, f),
            E::FdClosed { .. }
            | E::NotASocket { .. }
            | E::NotAFile { .. }
            | E::NotListening { .. }
            | E::WrongSocketType { .. }
            | E::FamilyMismatch { .. }
            | E::AddressMismatch { .. }
            | E::UnsupportedAddress { .. }
            | E::FdCheck { .. } => fd::fmt(self, f),
            E::NoSuchListener { .. }
            | E::SpecMismatch { .. }
            | E::NoActivatedSocket { .. }
            | E::ActivatedSocketMismatch { .. }
            | E::NoSuchFile { .. }
            | E::ModeUnavailable { .. }
            | E::ThreadsRunning { .. } => lookup::fmt(self, f),
            E::Bind { .. }
            | E::Open { .. }
            | E::NotRegularFile { .. }
            | E::UnsafeSecretPath { .. }
            | E::SecretPathChanged { .. }
            | E::Dup { .. } => open::fmt(self, f),
            E::UnknownUser { .. }
            | E::UserLookup { .. }
            | E::StillPrivileged { .. }
            | E::NotSingleThreaded { .. }
            | E::DropPrivileges { .. } => privilege::fmt(self, f),
            E::Control { .. }
            | E::Spawn { .. }
            | E::ProgramOpen { .. }
            | E::ProgramNotExecutable { .. }
            | E::Supervise { .. }
            | E::SignalMask { .. } => process::fmt(self, f),
            E::ReadyFdMisplaced { .. }
            | E::NotAReadyChannel { .. }
            | E::ReadyNotify { .. }
            | E::ReadyChannel { .. }
            | E::BadUpdate { .. }
            | E::NotReady { .. } => ready::fmt(self, f),
            E::Notify(err) => fmt::Display::fmt(err, f),
        }
    }
}

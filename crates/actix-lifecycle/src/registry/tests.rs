//! Unit tests of the registry through its handle and shards: ids, kinds,
//! unregistering and aborting counted once, the per-connection budget.

use slog::o;

use super::entry::{Entry, Live};
use super::shard::SEQ_BITS;
use super::{ConnectionGuard, RegistryHandle};

fn handle() -> RegistryHandle {
    RegistryHandle::new(slog::Logger::root(slog::Discard, o!()))
}

#[test]
fn per_connection_memory_stays_small() {
    // Issue 9 budgets 128 bytes per tracked connection (entry + guard):
    // the entry's allocation (with the Arc counts), its table slot (one
    // pointer and a control byte: the id is not stored twice), and
    // the guard. Keep these from growing unnoticed. (Issue 14 added
    // the client network, 8 bytes and a family byte in the padding.)
    let entry_alloc = std::mem::size_of::<Entry>() + 2 * std::mem::size_of::<usize>();
    let map_slot = std::mem::size_of::<Live>() + 1;
    let guard = std::mem::size_of::<ConnectionGuard>();
    assert!(entry_alloc <= 96, "entry allocation {entry_alloc} bytes");
    assert_eq!(guard, 16);
    assert!(
        entry_alloc + map_slot + guard <= 128,
        "{entry_alloc} + {map_slot} + {guard}"
    );
}

#[test]
fn ids_are_unique_and_name_their_shard() {
    let h = handle();
    let kind = h.kind("p", "l");
    let (s0, s1) = (h.new_shard(), h.new_shard());
    let a = s0.register(&kind);
    let b = s0.register(&kind);
    let c = s1.register(&kind);
    assert_ne!(a.id(), b.id());
    assert_eq!(a.id() >> SEQ_BITS, 0);
    assert_eq!(c.id() >> SEQ_BITS, 1);
    assert_eq!(h.live(), 3);
    drop((a, b, c));
    assert_eq!(h.live(), 0);
}

#[test]
fn unregister_is_counted_once() {
    let h = handle();
    let kind = h.kind("p", "l");
    let g = h.new_shard().register(&kind);
    assert!(h.unregister(g.id()));
    assert!(!h.unregister(g.id()));
    drop(g);
    let snap = h.snapshot();
    assert_eq!(snap.kind("p", "l").map(|k| k.live), Some(0));
    assert_eq!(snap.accepted(), 1);
}

#[test]
fn kinds_are_interned_and_foreign_kinds_reinterned() {
    let (h1, h2) = (handle(), handle());
    let a = h1.kind("smtp", "mx");
    let b = h1.kind("smtp", "mx");
    assert_eq!(a.index, b.index);
    let _other = h2.kind("imap", "imap");
    // A kind made by h1 used on h2 lands on h2's own ("smtp", "mx").
    let g = h2.new_shard().register(&a);
    let snap = h2.snapshot();
    assert_eq!(snap.kind("smtp", "mx").map(|k| k.live), Some(1));
    assert_eq!(snap.kind("imap", "imap").map(|k| k.live), Some(0));
    drop(g);
}

#[test]
fn a_kind_from_a_dropped_registry_is_not_taken_for_a_kind_of_a_new_one() {
    // A registry dropped and a new one made: the new one may well sit
    // at the old one's address. The old kind (index 0, "smtp"/"mx")
    // must not pass for the new registry's index 0 ("imap"/"imap").
    for _ in 0..64 {
        let old = handle();
        let stale = old.kind("smtp", "mx");
        drop(old);
        let new = handle();
        let _first = new.kind("imap", "imap");
        let g = new.new_shard().register(&stale);
        let snap = new.snapshot();
        assert_eq!(snap.kind("imap", "imap").map(|k| k.live), Some(0));
        assert_eq!(snap.kind("smtp", "mx").map(|k| k.live), Some(1));
        drop(g);
    }
}

#[test]
fn shutdown_and_abort_count_each_connection_once() {
    let h = handle();
    let kind = h.kind("p", "l");
    let shard = h.new_shard();
    let a = shard.register(&kind);
    let b = shard.register(&kind);
    assert!(h.abort(a.id()));
    assert!(h.abort(a.id()), "still live, already aborted");
    assert!(!h.abort(12345), "unknown id");
    assert_eq!(h.shutdown(), 1, "only b was not aborted yet");
    assert_eq!(h.shutdown(), 0);
    assert!(a.is_aborted() && b.is_aborted());
    assert_eq!(h.snapshot().aborted(), 2);
}

//! `RegistryHandle::current_thread_shard`: one shard per (thread,
//! registry), however often connections register, so code that registers
//! from whatever thread it runs on cannot grow the registry without bound.

use actix_lifecycle::ConnectionRegistry;

#[test]
fn many_registrations_on_one_thread_use_one_shard() {
    let handle = ConnectionRegistry::builder().build().unwrap().handle();
    let kind = handle.kind("http", "web");
    let before = handle.shard_count();
    for _ in 0..1000 {
        drop(handle.register_on_current_thread(&kind));
    }
    let kept: Vec<_> = (0..10)
        .map(|_| handle.register_on_current_thread(&kind))
        .collect();
    assert_eq!(handle.shard_count(), before + 1);
    assert_eq!(handle.live(), 10);
    drop(kept);
    assert_eq!(handle.live(), 0);
}

#[test]
fn each_thread_gets_its_own_shard_and_guards_may_move() {
    let handle = ConnectionRegistry::builder().build().unwrap().handle();
    let kind = handle.kind("http", "web");
    let before = handle.shard_count();
    let guards: Vec<_> = (0..4)
        .map(|_| {
            let (handle, kind) = (handle.clone(), kind.clone());
            std::thread::spawn(move || {
                let a = handle.register_on_current_thread(&kind);
                let b = handle.register_on_current_thread(&kind);
                (a, b)
            })
        })
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(handle.shard_count(), before + 4, "one shard per thread");
    assert_eq!(handle.live(), 8);
    drop(guards); // dropped on this thread: unregistered all the same
    assert_eq!(handle.live(), 0);
}

#[test]
fn two_registries_on_one_thread_keep_their_connections_apart() {
    let one = ConnectionRegistry::builder().build().unwrap().handle();
    let other = ConnectionRegistry::builder().build().unwrap().handle();
    let before = (one.shard_count(), other.shard_count());
    let g1 = one.register_on_current_thread(&one.kind("p", "a"));
    let g2 = other.register_on_current_thread(&other.kind("p", "b"));
    let g3 = other.register_on_current_thread(&other.kind("p", "b"));
    assert_eq!((one.live(), other.live()), (1, 2));
    assert_eq!(
        (one.shard_count(), other.shard_count()),
        (before.0 + 1, before.1 + 1)
    );
    drop((g1, g2, g3));
}

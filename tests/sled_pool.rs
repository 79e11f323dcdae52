//! The vendored sled's IO thread pool (vendor/README.md) under segment
//! turnover: small segments, many large writes and concurrent flushes from
//! several threads, so segment writes, truncations and flushes queue behind
//! each other on the pool. With one idle IO thread, a task that waits for
//! another queued task must still get a thread: the run must finish.
//!
//! Its own test binary: sled's pool is global to the process.

use std::sync::mpsc;
use std::time::Duration;

#[test]
fn segment_turnover_with_concurrent_flushes_never_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(dir.path())
        .segment_size(1024)
        .cache_capacity(64 * 1024)
        .flush_every_ms(None)
        .open()
        .unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let (db, done) = (db.clone(), done_tx.clone());
            std::thread::spawn(move || {
                let tree = db.open_tree(format!("t{writer}")).unwrap();
                for round in 0..300u32 {
                    for item in 0..8u32 {
                        let key = (round * 8 + item).to_be_bytes();
                        tree.insert(key, vec![writer as u8; 600 + (item as usize * 97)])
                            .unwrap();
                    }
                    if round % 3 == 0 {
                        // Old values go: segments empty out and are truncated.
                        for item in 0..8u32 {
                            tree.remove(((round.saturating_sub(3)) * 8 + item).to_be_bytes())
                                .unwrap();
                        }
                    }
                    db.flush().unwrap();
                }
                done.send(()).unwrap();
            })
        })
        .collect();
    drop(done_tx);
    for finished in 0..writers.len() {
        // A liveness bound, not a performance one: the whole run takes a few
        // seconds; a deadlock never ends.
        if done_rx.recv_timeout(Duration::from_secs(120)).is_err() {
            panic!(
                "sled hung: {finished} of {} writers finished in 120 s",
                writers.len()
            );
        }
    }
    for writer in writers {
        writer.join().unwrap();
    }
}

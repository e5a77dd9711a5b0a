//! Writes N MiB of audio into a fresh sled database in each layout and prints the time (inserts
//! plus a final flush) and the bytes on disk:
//! - `whole`: 1 MiB values in one tree, keys in order (what chorus stores);
//! - `pieces`: the same audio as 64 KiB values in one tree;
//! - `tree-per-chunk`: one tree per 1 MiB value.
//!
//! Then creates 20,000 small trees, timing each 5,000, to show what a tree per chunk costs once
//! a library has many chunks (sled rewrites its registry of trees for every new tree).

use std::path::Path;
use std::time::Instant;

const MIB: usize = 1024 * 1024;

fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn open(dir: &Path) -> sled::Db {
    let _ = std::fs::remove_dir_all(dir);
    sled::Config::new()
        .path(dir)
        .flush_every_ms(Some(1000))
        .cache_capacity(64 * MIB as u64)
        .open()
        .expect("open sled")
}

fn layout(name: &str, mib: usize, dir: &Path) {
    let db = open(dir);
    let audio: Vec<u8> = (0..MIB).map(|i| (i * 7 % 251) as u8).collect();
    let started = Instant::now();
    let tree = db.open_tree("audio").expect("tree");
    for chunk in 0..mib as u64 {
        match name {
            "whole" => {
                tree.insert(chunk.to_be_bytes(), audio.as_slice())
                    .expect("insert");
            }
            "pieces" => {
                for (p, piece) in audio.chunks(64 * 1024).enumerate() {
                    let mut key = chunk.to_be_bytes().to_vec();
                    key.push(p as u8);
                    tree.insert(key, piece).expect("insert");
                }
            }
            _ => {
                let own = db.open_tree(format!("a/{chunk}")).expect("tree");
                own.insert(b"c", audio.as_slice()).expect("insert");
            }
        }
    }
    db.flush().expect("flush");
    let secs = started.elapsed().as_secs_f64();
    drop(tree);
    drop(db);
    println!(
        "{name:>15}: {mib} MiB in {secs:.2} s, {:.0} MiB on disk",
        disk_bytes(dir) as f64 / MIB as f64
    );
}

fn many_trees(dir: &Path) {
    let db = open(dir);
    let mut started = Instant::now();
    for i in 0..20_000u64 {
        let tree = db.open_tree(format!("a/{i:016x}")).expect("tree");
        tree.insert(b"c", vec![1u8; 1000]).expect("insert");
        if (i + 1) % 5000 == 0 {
            db.flush().expect("flush");
            println!(
                "{:>6} trees: the last 5,000 took {:.2} s",
                i + 1,
                started.elapsed().as_secs_f64()
            );
            started = Instant::now();
        }
    }
    drop(db);
    println!(
        "20,000 trees of 1 KB: {:.0} MiB on disk",
        disk_bytes(dir) as f64 / MIB as f64
    );
}

fn main() {
    let mib = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(500);
    let dir = std::env::temp_dir().join(format!("sled-audio-writes-{}", std::process::id()));
    for name in ["whole", "pieces", "tree-per-chunk"] {
        layout(name, mib, &dir);
    }
    many_trees(&dir);
    let _ = std::fs::remove_dir_all(&dir);
}

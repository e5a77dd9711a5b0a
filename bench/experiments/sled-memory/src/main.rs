//! Writes 200 MiB into one sled tree as values of the given size (default 1 MiB, like chorus's
//! audio chunks) with the given `cache_capacity` (default 8 MiB), fsyncing after each, then
//! reads every value once, printing the process's resident memory along the way.

use std::path::PathBuf;

fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), sled::Error> {
    let (size, cache) = (arg(1, 1 << 20), arg(2, 8 << 20));
    let dir = PathBuf::from(std::env::temp_dir()).join(format!("sled-memory-{}", std::process::id()));
    let db = sled::Config::new().path(&dir).cache_capacity(cache).open()?;
    let tree = db.open_tree("audio")?;
    let value = vec![7u8; size as usize];
    let n = (200u64 << 20) / size;
    println!("{n} values of {size} bytes, cache_capacity {cache} bytes; RSS at start {} MiB", rss_mib());
    for i in 0..n {
        tree.insert(i.to_be_bytes(), value.clone())?;
        db.flush()?;
        if (i + 1) % (n / 4) == 0 {
            println!("after writing {:3} MiB: RSS {} MiB", ((i + 1) * size) >> 20, rss_mib());
        }
    }
    for i in 0..n {
        tree.get(i.to_be_bytes())?;
    }
    println!("after reading it all:  RSS {} MiB", rss_mib());
    drop((tree, db));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

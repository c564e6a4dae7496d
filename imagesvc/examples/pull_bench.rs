//! Pull + unpack benchmark (not a test).
//!
//! Build a large multi-layer image and serve it from a private registry, e.g.:
//!
//! ```sh
//! python3 shared/testimages/build.py /tmp/bench --bench-dir /usr/include --bench-dir /usr/lib/gcc \
//!     --bench-dir /usr/share/locale --bench-dir /usr/share/doc
//! REGISTRY_ADDR=127.0.0.1:5055 REGISTRY_DIR=/tmp/bench-registry IMAGES_DIR=/tmp/bench \
//!     shared/testimages/registry-up
//! cargo run --release -p skiff-imagesvc --example pull_bench -- 127.0.0.1:5055/bench/large:1 3
//! ```
//!
//! Arguments: image reference, runs (default 3), `nosync` to set `sync_after_unpack = false`. For each of `max_concurrent_downloads` = 1
//! and 3 it pulls into a fresh root `runs` times and reports wall time and throughput, then a
//! pull of an image already present and an unpack-only pass (blobs present, snapshots gone).

use std::time::Instant;

use imagesvc::{ImageStore, ImageStoreConfig, RegistryConfig};

fn dir_bytes(p: &std::path::Path) -> u64 {
    imagesvc::store::usage(p).map(|u| u.used_bytes).unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let image = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:5055/bench/large:1".into());
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let sync = args.get(3).map(|s| s != "nosync").unwrap_or(true);
    let base = std::env::temp_dir().join(format!("skiff-pull-bench-{}", std::process::id()));
    println!("image {image}, {runs} runs each, sync_after_unpack={sync}");
    for conc in [1usize, 3] {
        let mut times = Vec::new();
        let mut size = 0;
        let mut unpacked = 0;
        for run in 0..runs {
            let root = base.join(format!("c{conc}-{run}"));
            let reg = RegistryConfig { max_concurrent_downloads: conc, sync_after_unpack: sync, ..Default::default() };
            let store = ImageStore::open(ImageStoreConfig { root: root.clone(), registry: reg }).await?;
            let t = Instant::now();
            let rec = store.pull(&image, None).await?;
            times.push(t.elapsed().as_secs_f64());
            size = rec.size;
            unpacked = dir_bytes(&root.join("snapshots"));
            if run + 1 < runs {
                std::fs::remove_dir_all(&root)?;
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times[times.len() / 2];
        println!(
            "cold pull+unpack, max_concurrent_downloads={conc}: median {median:.2}s (min {:.2}s, max {:.2}s); \
             {:.1} MiB compressed, {:.1} MiB unpacked, {:.1} MiB/s compressed",
            times[0],
            times[times.len() - 1],
            size as f64 / 1048576.0,
            unpacked as f64 / 1048576.0,
            size as f64 / 1048576.0 / median
        );
    }
    // Already present: only the manifest round trip.
    let root = base.join(format!("c3-{}", runs - 1));
    let store = ImageStore::open(ImageStoreConfig { root: root.clone(), registry: RegistryConfig::default() }).await?;
    let t = Instant::now();
    store.pull(&image, None).await?;
    println!("pull of an image already present: {:.3}s", t.elapsed().as_secs_f64());
    // Unpack only: drop the snapshots, keep the blobs.
    let rec = store.status(&image).await?.ok_or("image vanished")?;
    drop(store);
    for c in &rec.chain_ids {
        std::fs::remove_dir_all(root.join("snapshots").join(c.hex()))?;
    }
    // Keep the metadata from GC-ing blobs: the image record still references them.
    let store = ImageStore::open(ImageStoreConfig {
        root: root.clone(),
        registry: RegistryConfig { sync_after_unpack: sync, ..Default::default() },
    })
    .await?;
    let t = Instant::now();
    store.pull(&image, None).await?;
    println!("unpack only (blobs present): {:.2}s", t.elapsed().as_secs_f64());
    std::fs::remove_dir_all(&base)?;
    Ok(())
}

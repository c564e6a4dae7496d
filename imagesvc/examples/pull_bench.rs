//! Pull + unpack benchmark (not a test).
//!
//! Build a large multi-layer image and serve it from a private registry, e.g.:
//!
//! ```sh
//! python3 shared/testimages/build.py /tmp/bench --bench-dir /usr/include --bench-dir /usr/lib/gcc \
//!     --bench-dir /usr/share/locale --bench-dir /usr/share/doc
//! REGISTRY_ADDR=127.0.0.1:5055 REGISTRY_DIR=/tmp/bench-registry IMAGES_DIR=/tmp/bench \
//!     shared/testimages/registry-up
//! cargo run --release -p skiff-imagesvc --example pull_bench -- 127.0.0.1:5055/bench/large:1 5
//! ```
//!
//! Arguments: image reference, runs (default 5), then options: `nosync` (`sync_after_unpack =
//! false`), `conc=N` (`max_concurrent_downloads`, default 3; `conc=1,3` runs both), `parts`
//! (also time the parts of a pull: decompression and hashing of the blobs in memory, file
//! creation from the tar streams in memory, the download alone, an unpack from blobs already
//! present, the syncfs after it).
//!
//! Each run pulls into a fresh root under `$TMPDIR`; the roots are deleted only after all runs
//! of a series (deleting tens of thousands of files right before the next run makes ext4 without
//! a journal skip the recently freed inodes, which slows the next run's file creation).
//! Prints the median and p90 wall time of the cold pulls (pull + unpack + flush + record).

use std::io::Read;
use std::time::Instant;

use imagesvc::{ImageStore, ImageStoreConfig, RegistryConfig};

fn dir_bytes(p: &std::path::Path) -> u64 {
    imagesvc::store::usage(p).map(|u| u.used_bytes).unwrap_or(0)
}

fn stats(mut t: Vec<f64>) -> (f64, f64, f64, f64) {
    t.sort_by(|a, b| a.total_cmp(b));
    let n = t.len();
    let median = if n % 2 == 1 { t[n / 2] } else { (t[n / 2 - 1] + t[n / 2]) / 2.0 };
    // p90: nearest rank.
    let p90 = t[((0.9 * n as f64).ceil() as usize).clamp(1, n) - 1];
    (median, p90, t[0], t[n - 1])
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let image = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:5055/bench/large:1".into());
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5).max(1);
    let opts = &args[3.min(args.len())..];
    let sync = !opts.iter().any(|o| o == "nosync");
    let parts = opts.iter().any(|o| o == "parts");
    let concs: Vec<usize> = opts
        .iter()
        .find_map(|o| o.strip_prefix("conc="))
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![3]);
    let base = std::env::temp_dir().join(format!("skiff-pull-bench-{}", std::process::id()));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("image {image}, {runs} cold runs per series, sync_after_unpack={sync}, {cores} cores");
    let mut last_root = None;
    for &conc in &concs {
        let mut times = Vec::new();
        let mut size = 0;
        let mut unpacked = 0;
        let mut roots = Vec::new();
        for run in 0..runs {
            let root = base.join(format!("c{conc}-{run}"));
            let reg = RegistryConfig { max_concurrent_downloads: conc, sync_after_unpack: sync, ..Default::default() };
            let store = ImageStore::open(ImageStoreConfig { root: root.clone(), registry: reg }).await?;
            let t = Instant::now();
            let rec = store.pull(&image, None).await?;
            let secs = t.elapsed().as_secs_f64();
            println!("  run {}: {secs:.2}s", run + 1);
            times.push(secs);
            size = rec.size;
            unpacked = dir_bytes(&root.join("snapshots"));
            roots.push(root);
        }
        let (median, p90, min, max) = stats(times);
        println!(
            "cold pull+unpack, max_concurrent_downloads={conc}: median {median:.2}s, p90 {p90:.2}s (min {min:.2}s, \
             max {max:.2}s); {:.1} MiB compressed, {:.1} MiB unpacked, {:.1} MiB/s compressed",
            size as f64 / 1048576.0,
            unpacked as f64 / 1048576.0,
            size as f64 / 1048576.0 / median
        );
        last_root = roots.pop();
        for r in roots {
            std::fs::remove_dir_all(&r)?;
        }
    }
    let root = last_root.ok_or("no run")?;
    // Already present: only the manifest round trip.
    let store = ImageStore::open(ImageStoreConfig { root: root.clone(), registry: RegistryConfig::default() }).await?;
    let t = Instant::now();
    store.pull(&image, None).await?;
    println!("pull of an image already present: {:.3}s", t.elapsed().as_secs_f64());
    if parts {
        let rec = store.status(&image).await?.ok_or("image vanished")?;
        // Decompression and hashing, in memory, one core.
        let mut comp = 0u64;
        let mut raw = 0u64;
        let (mut t_gz, mut t_sha_c, mut t_sha_u, mut t_tar) = (0.0, 0.0, 0.0, 0.0);
        let tar_dir = root.join("tar-only");
        let mut buf = vec![0u8; 256 * 1024];
        for l in &rec.layers {
            let data = std::fs::read(store.content().path(l))?;
            comp += data.len() as u64;
            let t = Instant::now();
            let mut out = Vec::with_capacity(data.len() * 4);
            flate2::read::MultiGzDecoder::new(&data[..]).read_to_end(&mut out)?;
            t_gz += t.elapsed().as_secs_f64();
            raw += out.len() as u64;
            let t = Instant::now();
            imagesvc::reference::Digest::of(&data);
            t_sha_c += t.elapsed().as_secs_f64();
            let t = Instant::now();
            imagesvc::reference::Digest::of(&out);
            t_sha_u += t.elapsed().as_secs_f64();
            // File creation only: the tar, already in memory, into an empty directory.
            let dest = tar_dir.join(l.hex());
            std::fs::create_dir_all(&dest)?;
            let t = Instant::now();
            imagesvc::unpack::unpack("bench", &out[..], &dest)?;
            t_tar += t.elapsed().as_secs_f64();
            buf[0] = out[0];
        }
        let mib = |b: u64| b as f64 / 1048576.0;
        // Download only: the layer blobs into memory, as many at once as the pull does.
        if let Some((host, rest)) = image.split_once('/') {
            let repo = rest.rsplit_once(':').map(|(r, _)| r).unwrap_or(rest);
            let client = reqwest::Client::new();
            let t = Instant::now();
            let mut got = 0u64;
            for chunk in rec.layers.chunks(3) {
                let fetches = chunk.iter().map(|l| {
                    let url = format!("http://{host}/v2/{repo}/blobs/{l}");
                    let c = client.clone();
                    async move { c.get(url).send().await?.error_for_status()?.bytes().await }
                });
                for b in futures::future::join_all(fetches).await {
                    got += b?.len() as u64;
                }
            }
            println!(
                "download only (layer blobs into memory, 3 at a time): {:.2}s for {:.1} MiB",
                t.elapsed().as_secs_f64(),
                mib(got)
            );
        }
        println!(
            "gzip decode (flate2/zlib-rs, one core): {:.2}s for {:.1} MiB -> {:.1} MiB ({:.0} MiB/s out)",
            t_gz,
            mib(comp),
            mib(raw),
            mib(raw) / t_gz
        );
        println!(
            "sha256: {:.2}s compressed + {:.2}s uncompressed ({:.0} MiB/s)",
            t_sha_c,
            t_sha_u,
            mib(comp + raw) / (t_sha_c + t_sha_u)
        );
        println!("file creation only (tar in memory, one thread, no flush): {t_tar:.2}s");
        std::fs::remove_dir_all(&tar_dir)?;
        // Unpack only: drop the snapshots, keep the blobs (the record keeps them from GC).
        drop(store);
        for c in &rec.chain_ids {
            std::fs::remove_dir_all(root.join("snapshots").join(c.hex()))?;
        }
        let store = ImageStore::open(ImageStoreConfig {
            root: root.clone(),
            registry: RegistryConfig { sync_after_unpack: false, ..Default::default() },
        })
        .await?;
        let t = Instant::now();
        store.pull(&image, None).await?;
        println!("unpack only (blobs present, no flush): {:.2}s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let f = std::fs::File::open(&root)?;
        // SAFETY: syncfs on a descriptor we hold.
        let r = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
        println!("syncfs right after it: {:.3}s (rc {r})", t.elapsed().as_secs_f64());
    }
    std::fs::remove_dir_all(&base)?;
    Ok(())
}

//! CRI 1.36 stats on fake cgroup trees: PSI and io.stat on v2, blkio and no PSI on v1, and
//! the details the metrics RPCs report (cpu.stat, memory.stat, limits).

use std::path::Path;

use runtime::cgroups::{CgroupManager, Hierarchies, IoDeviceStats, V1Hierarchy};

fn touch(dir: &Path, files: &[(&str, &str)]) {
    for (f, v) in files {
        std::fs::write(dir.join(f), v).unwrap();
    }
}

#[test]
fn v2_psi_io_and_details() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    touch(root, &[("cgroup.controllers", "cpu memory pids io"), ("cgroup.subtree_control", "")]);
    let m = CgroupManager::new(Hierarchies::unified_at(root), Some(root.join("registry.json"))).unwrap();
    m.create("/pod/ctr").unwrap();
    let d = root.join("pod/ctr");
    touch(
        &d,
        &[
            (
                "cpu.stat",
                "usage_usec 3000\nuser_usec 2000\nsystem_usec 1000\nnr_periods 10\nnr_throttled 4\nthrottled_usec 50\n",
            ),
            ("cpu.max", "20000 100000\n"),
            ("cpu.weight", "39\n"),
            ("memory.current", "1000000"),
            ("memory.max", "67108864"),
            ("memory.stat", "anon 4000\nfile 600000\nfile_mapped 1234\nkernel 777\ninactive_file 300000\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            ("memory.swap.current", "0"),
            ("memory.swap.max", "max"),
            ("memory.peak", "2000000"),
            ("pids.current", "2"),
            ("pids.max", "max"),
            ("io.stat", "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"),
            (
                "cpu.pressure",
                "some avg10=1.00 avg60=0.50 avg300=0.10 total=1500\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=10\n",
            ),
            (
                "memory.pressure",
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=20\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n",
            ),
            (
                "io.pressure",
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=30\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=6\n",
            ),
        ],
    );
    let s = m.stats("/pod/ctr").unwrap();
    assert_eq!(s.cpu_usage_ns, Some(3_000_000));
    assert_eq!(s.cpu_user_ns, Some(2_000_000));
    assert_eq!(s.cpu_system_ns, Some(1_000_000));
    assert_eq!((s.cpu_periods, s.cpu_throttled_periods, s.cpu_throttled_ns), (Some(10), Some(4), Some(50_000)));
    assert_eq!((s.cpu_quota_us, s.cpu_period_us), (Some(20000), Some(100000)));
    // weight 39 is what shares 1024 map to; the inverse lands close to it
    let shares = s.cpu_shares.unwrap();
    assert!((990..=1050).contains(&shares), "{shares}");
    assert_eq!(s.memory_cache_bytes, Some(600000));
    assert_eq!(s.memory_mapped_file_bytes, Some(1234));
    assert_eq!(s.memory_kernel_bytes, Some(777));
    assert_eq!(s.memory_failcnt, Some(3));
    assert_eq!(s.memory_max_usage_bytes, Some(2_000_000));
    assert_eq!(s.memory_swap_bytes, Some(0));
    assert_eq!(s.memory_swap_limit_bytes, None);
    assert_eq!(s.pids_max, None);
    assert_eq!(
        s.io,
        vec![IoDeviceStats { major: 8, minor: 0, read_bytes: 4096, write_bytes: 8192, reads: 1, writes: 2 }]
    );
    let cpu = s.cpu_psi.unwrap();
    assert_eq!(cpu.some.total_us, 1500);
    assert_eq!(cpu.some.avg10, 1.0);
    assert_eq!(cpu.full.unwrap().total_us, 10);
    assert_eq!(s.memory_psi.unwrap().full.unwrap().total_us, 5);
    assert_eq!(s.io_psi.unwrap().some.total_us, 30);

    // a kernel without PSI (or psi=0): the files are absent, which is not an error
    for f in ["cpu.pressure", "memory.pressure", "io.pressure", "io.stat"] {
        std::fs::remove_file(d.join(f)).unwrap();
    }
    let s = m.stats("/pod/ctr").unwrap();
    assert!(s.cpu_psi.is_none() && s.memory_psi.is_none() && s.io_psi.is_none());
    assert!(s.io.is_empty());
    assert_eq!(s.cpu_usage_ns, Some(3_000_000));
    m.remove("/pod/ctr").unwrap();
}

#[test]
fn v1_blkio_without_psi() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut v1 = Vec::new();
    for c in ["cpu", "cpuacct", "memory", "pids", "blkio"] {
        let d = root.join(c);
        std::fs::create_dir(&d).unwrap();
        v1.push(V1Hierarchy { mountpoint: d, controllers: vec![c.to_string()] });
    }
    let m = CgroupManager::new(Hierarchies { v1, unified: None }, Some(root.join("registry.json"))).unwrap();
    m.create("/pod/c").unwrap();
    touch(&root.join("cpuacct/pod/c"), &[("cpuacct.usage", "5000000000"), ("cpuacct.stat", "user 300\nsystem 100\n")]);
    touch(
        &root.join("cpu/pod/c"),
        &[
            ("cpu.stat", "nr_periods 7\nnr_throttled 2\nthrottled_time 900\n"),
            ("cpu.shares", "1024\n"),
            ("cpu.cfs_quota_us", "-1\n"),
            ("cpu.cfs_period_us", "100000\n"),
        ],
    );
    touch(
        &root.join("memory/pod/c"),
        &[
            ("memory.usage_in_bytes", "5000"),
            ("memory.limit_in_bytes", "9223372036854771712"),
            (
                "memory.stat",
                "total_cache 100\ntotal_rss 2000\ntotal_mapped_file 50\ntotal_swap 0\ntotal_inactive_file 1000\n",
            ),
            ("memory.max_usage_in_bytes", "9000"),
            ("memory.failcnt", "0"),
            ("memory.kmem.usage_in_bytes", "300"),
            ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"),
        ],
    );
    touch(&root.join("pids/pod/c"), &[("pids.current", "1"), ("pids.max", "100")]);
    touch(
        &root.join("blkio/pod/c"),
        &[
            ("blkio.throttle.io_service_bytes_recursive", "8:0 Read 4096\n8:0 Write 512\n8:0 Total 4608\nTotal 4608\n"),
            ("blkio.throttle.io_serviced_recursive", "8:0 Read 1\n8:0 Write 1\n8:0 Total 2\nTotal 2\n"),
        ],
    );
    let s = m.stats("/pod/c").unwrap();
    assert_eq!(s.cpu_user_ns, Some(3_000_000_000));
    assert_eq!(s.cpu_system_ns, Some(1_000_000_000));
    assert_eq!((s.cpu_periods, s.cpu_throttled_periods, s.cpu_throttled_ns), (Some(7), Some(2), Some(900)));
    assert_eq!((s.cpu_shares, s.cpu_quota_us, s.cpu_period_us), (Some(1024), None, Some(100000)));
    assert_eq!(s.memory_cache_bytes, Some(100));
    assert_eq!(s.memory_mapped_file_bytes, Some(50));
    assert_eq!(s.memory_kernel_bytes, Some(300));
    assert_eq!(s.memory_max_usage_bytes, Some(9000));
    assert_eq!(s.memory_failcnt, Some(0));
    assert_eq!(s.memory_limit_bytes, None);
    assert_eq!(s.pids_max, Some(100));
    assert_eq!(
        s.io,
        vec![IoDeviceStats { major: 8, minor: 0, read_bytes: 4096, write_bytes: 512, reads: 1, writes: 1 }]
    );
    assert!(s.cpu_psi.is_none() && s.memory_psi.is_none() && s.io_psi.is_none(), "no PSI on v1");
    m.remove("/pod/c").unwrap();
}

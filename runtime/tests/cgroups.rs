//! cgroups: v2 and v1 on fake trees in temp dirs, and v1 for real under /sys/fs/cgroup.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder,
};
use runtime::cgroups::{self, CgroupManager, CgroupMode, Hierarchies, V1Hierarchy};

fn uniq() -> String {
    format!(
        "{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() & 0xffffff
    )
}

fn touch(dir: &Path, files: &[(&str, &str)]) {
    for (f, v) in files {
        std::fs::write(dir.join(f), v).unwrap();
    }
}

fn rd(p: PathBuf) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn resources() -> LinuxResources {
    LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .cpus("0")
                .mems("0")
                .build()
                .unwrap(),
        )
        .memory(LinuxMemoryBuilder::default().limit(64i64 << 20).swap(128i64 << 20).build().unwrap())
        .pids(LinuxPidsBuilder::default().limit(100i64).build().unwrap())
        .build()
        .unwrap()
}

#[test]
fn v2_fake_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    touch(root, &[("cgroup.controllers", "cpu cpuset memory pids hugetlb io"), ("cgroup.subtree_control", "")]);
    let reg = root.join("registry.json");
    // /kubepods exists already (not skiff's)
    std::fs::create_dir(root.join("kubepods")).unwrap();
    touch(&root.join("kubepods"), &[("cgroup.controllers", "cpu memory pids"), ("cgroup.subtree_control", "")]);
    let m = CgroupManager::new(Hierarchies::unified_at(root), Some(reg.clone())).unwrap();
    assert_eq!(m.mode(), CgroupMode::Unified);
    m.create("/kubepods/pod1/ctr1").unwrap();
    // controllers were enabled for children where offered
    assert_eq!(rd(root.join("kubepods/cgroup.subtree_control")), "+cpu +memory +pids");
    let ctr = root.join("kubepods/pod1/ctr1");
    assert!(ctr.is_dir());
    assert!(m.created_by_skiff("/kubepods/pod1/ctr1").unwrap());
    assert!(!m.created_by_skiff("/kubepods").unwrap());
    touch(
        &ctr,
        &[
            ("cpu.weight", ""),
            ("cpu.max", "max 100000"),
            ("cpuset.cpus", ""),
            ("cpuset.mems", ""),
            ("memory.max", "max"),
            ("memory.swap.max", "max"),
            ("pids.max", "max"),
            ("hugetlb.2MB.max", "max"),
            ("memory.high", "max"),
        ],
    );
    let mut r = resources();
    r.set_hugepage_limits(Some(vec![LinuxHugepageLimitBuilder::default()
        .page_size("2MB")
        .limit(4i64 << 20)
        .build()
        .unwrap()]));
    r.set_unified(Some(HashMap::from([("memory.high".to_string(), "50000000".to_string())])));
    m.apply("/kubepods/pod1/ctr1", &r).unwrap();
    assert_eq!(rd(ctr.join("cpu.weight")), "20");
    assert_eq!(rd(ctr.join("cpu.max")), "50000 100000");
    assert_eq!(rd(ctr.join("cpuset.cpus")), "0");
    assert_eq!(rd(ctr.join("memory.max")), (64u64 << 20).to_string());
    assert_eq!(rd(ctr.join("memory.swap.max")), (64u64 << 20).to_string());
    assert_eq!(rd(ctr.join("pids.max")), "100");
    assert_eq!(rd(ctr.join("hugetlb.2MB.max")), (4u64 << 20).to_string());
    assert_eq!(rd(ctr.join("memory.high")), "50000000");
    // bad unified keys are InvalidArgument-worthy
    let mut bad = LinuxResources::default();
    bad.set_unified(Some(HashMap::from([("../x".to_string(), "1".to_string())])));
    let e = m.apply("/kubepods/pod1/ctr1", &bad).unwrap_err();
    assert_eq!(e.kind(), runtime::ErrorKind::InvalidArgument);
    // stats
    touch(
        &ctr,
        &[
            ("cpu.stat", "usage_usec 1500\nuser_usec 1000\n"),
            ("memory.current", "1000000"),
            ("memory.stat", "anon 4000\nfile 600000\ninactive_file 300000\npgfault 7\npgmajfault 2\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            ("pids.current", "3"),
        ],
    );
    let s = m.stats("/kubepods/pod1/ctr1").unwrap();
    assert_eq!(s.cpu_usage_ns, Some(1_500_000));
    assert_eq!(s.memory_usage_bytes, Some(1_000_000));
    assert_eq!(s.memory_working_set_bytes, Some(700_000));
    assert_eq!(s.memory_rss_bytes, Some(4000));
    assert_eq!(s.page_faults, Some(7));
    assert_eq!(s.major_page_faults, Some(2));
    assert_eq!(s.pids_current, Some(3));
    assert_eq!(s.oom_kills, Some(1));
    assert_eq!(s.memory_limit_bytes, Some(64 << 20));
    assert_eq!(m.oom_kills("/kubepods/pod1/ctr1").unwrap(), 1);
    // the registry survives a restart
    drop(m);
    let m = CgroupManager::new(Hierarchies::unified_at(root), Some(reg.clone())).unwrap();
    m.remove("/kubepods/pod1/ctr1").unwrap();
    assert!(!ctr.exists());
    assert!(!root.join("kubepods/pod1").exists(), "skiff-created parent removed");
    assert!(root.join("kubepods").exists(), "pre-existing parent kept");
    // idempotent
    m.remove("/kubepods/pod1/ctr1").unwrap();
    // never removes what skiff did not create
    m.remove("/kubepods").unwrap();
    assert!(root.join("kubepods").exists());
}

#[test]
fn pod_cgroup_outlives_its_containers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let reg = root.join("reg.json");
    let m = CgroupManager::new(Hierarchies::unified_at(root.join("cg")), Some(reg.clone())).unwrap();
    std::fs::create_dir(root.join("cg")).unwrap();
    m.create("/kubepods/besteffort/pod1").unwrap();
    m.create("/kubepods/besteffort/pod1/c1").unwrap();
    m.create("/kubepods/besteffort/pod1/c2").unwrap();
    m.remove("/kubepods/besteffort/pod1/c1").unwrap();
    m.remove("/kubepods/besteffort/pod1/c2").unwrap();
    assert!(root.join("cg/kubepods/besteffort/pod1").is_dir(), "the pod cgroup stays until the pod goes");
    // after a restart too
    let m = CgroupManager::new(Hierarchies::unified_at(root.join("cg")), Some(reg)).unwrap();
    m.create("/kubepods/besteffort/pod1/c3").unwrap();
    m.remove("/kubepods/besteffort/pod1/c3").unwrap();
    assert!(root.join("cg/kubepods/besteffort/pod1").is_dir());
    m.remove("/kubepods/besteffort/pod1").unwrap();
    assert!(!root.join("cg/kubepods").exists(), "parents made on the way go with the pod");
}

#[test]
fn v2_parent_shared_by_two_pods() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let m = CgroupManager::new(Hierarchies::unified_at(root), None).unwrap();
    m.create("/kubepods/burstable/podA").unwrap();
    m.create("/kubepods/burstable/podB").unwrap();
    m.remove("/kubepods/burstable/podA").unwrap();
    assert!(root.join("kubepods/burstable/podB").is_dir());
    m.remove("/kubepods/burstable/podB").unwrap();
    assert!(!root.join("kubepods").exists(), "the last pod takes the parents skiff created with it");
}

/// Unmounts a bind mount at drop (also when the test fails).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn busy_empty_parent_is_left_over_then_swept() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (a mount point makes rmdir answer EBUSY)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let reg = root.join("reg.json");
    let cg = root.join("cg");
    std::fs::create_dir(&cg).unwrap();
    let m = CgroupManager::new(Hierarchies::unified_at(&cg), Some(reg.clone())).unwrap();
    m.create("/e2e/pod1").unwrap();
    // a mount point stands in for an empty cgroup the kernel still holds busy
    let parent = cg.join("e2e");
    nix::mount::mount(Some(&parent), &parent, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>).unwrap();
    let guard = Unmount(parent.clone());
    let t = std::time::Instant::now();
    m.remove("/e2e/pod1").unwrap();
    assert!(!parent.join("pod1").exists());
    assert!(parent.is_dir(), "a busy parent stays");
    assert!(t.elapsed() >= std::time::Duration::from_secs(2), "retried for a while: {:?}", t.elapsed());
    assert_eq!(m.leftovers().len(), 1, "kept as left over");
    drop(guard);
    // a later manager on the same registry (skiffd's restart) retries it
    let m = CgroupManager::new(Hierarchies::unified_at(&cg), Some(reg.clone())).unwrap();
    assert!(!parent.exists(), "swept");
    assert!(m.leftovers().is_empty());
    // a left-over parent that holds a child again is no longer left over; the child takes it
    m.create("/e2e/pod2").unwrap();
    nix::mount::mount(Some(&parent), &parent, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>).unwrap();
    let guard = Unmount(parent.clone());
    m.remove("/e2e/pod2").unwrap();
    assert_eq!(m.leftovers().len(), 1);
    m.create("/e2e/pod3").unwrap();
    drop(guard);
    m.sweep();
    assert!(m.leftovers().is_empty() && parent.join("pod3").is_dir());
    m.remove("/e2e/pod3").unwrap();
    assert!(!parent.exists());
}

fn fake_v1(root: &Path) -> Hierarchies {
    let mut v1 = Vec::new();
    for c in ["cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "hugetlb"] {
        let d = root.join(c);
        std::fs::create_dir(&d).unwrap();
        v1.push(V1Hierarchy { mountpoint: d, controllers: vec![c.to_string()] });
    }
    Hierarchies { v1, unified: Some(root.join("unified")) }
}

#[test]
fn v1_fake_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let h = fake_v1(root);
    touch(&root.join("cpuset"), &[("cpuset.cpus", "0-1"), ("cpuset.mems", "0")]);
    let m = CgroupManager::new(h, None).unwrap();
    assert_eq!(m.mode(), CgroupMode::Hybrid);
    // parent cpuset files exist before the child: the child inherits them
    std::fs::create_dir(root.join("cpuset/pod")).unwrap();
    touch(&root.join("cpuset/pod"), &[("cpuset.cpus", "0-1"), ("cpuset.mems", "0")]);
    m.create("/pod/c").unwrap();
    for c in ["cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "hugetlb"] {
        assert!(root.join(c).join("pod/c").is_dir(), "{c}");
    }
    touch(
        &root.join("cpu/pod/c"),
        &[("cpu.shares", "1024"), ("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "-1")],
    );
    touch(&root.join("cpuset/pod/c"), &[("cpuset.cpus", ""), ("cpuset.mems", "")]);
    touch(
        &root.join("memory/pod/c"),
        &[("memory.limit_in_bytes", "9223372036854771712"), ("memory.memsw.limit_in_bytes", "9223372036854771712")],
    );
    touch(&root.join("pids/pod/c"), &[("pids.max", "max")]);
    touch(&root.join("hugetlb/pod/c"), &[("hugetlb.2MB.limit_in_bytes", "")]);
    let mut r = resources();
    r.set_hugepage_limits(Some(vec![LinuxHugepageLimitBuilder::default()
        .page_size("2MB")
        .limit(2i64 << 20)
        .build()
        .unwrap()]));
    m.apply("/pod/c", &r).unwrap();
    assert_eq!(rd(root.join("cpu/pod/c/cpu.shares")), "512");
    assert_eq!(rd(root.join("cpu/pod/c/cpu.cfs_quota_us")), "50000");
    assert_eq!(rd(root.join("cpu/pod/c/cpu.cfs_period_us")), "100000");
    assert_eq!(rd(root.join("cpuset/pod/c/cpuset.cpus")), "0");
    assert_eq!(rd(root.join("memory/pod/c/memory.limit_in_bytes")), (64u64 << 20).to_string());
    assert_eq!(rd(root.join("memory/pod/c/memory.memsw.limit_in_bytes")), (128u64 << 20).to_string());
    assert_eq!(rd(root.join("pids/pod/c/pids.max")), "100");
    assert_eq!(rd(root.join("hugetlb/pod/c/hugetlb.2MB.limit_in_bytes")), (2u64 << 20).to_string());
    // unified resources are rejected on v1
    let mut u = LinuxResources::default();
    u.set_unified(Some(HashMap::from([("memory.high".to_string(), "1".to_string())])));
    assert_eq!(m.apply("/pod/c", &u).unwrap_err().kind(), runtime::ErrorKind::InvalidArgument);
    // swap below memory is invalid
    let bad = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(100i64).swap(50i64).build().unwrap())
        .build()
        .unwrap();
    assert_eq!(m.apply("/pod/c", &bad).unwrap_err().kind(), runtime::ErrorKind::InvalidArgument);
    touch(&root.join("cpuacct/pod/c"), &[("cpuacct.usage", "123456")]);
    touch(
        &root.join("memory/pod/c"),
        &[
            ("memory.usage_in_bytes", "5000"),
            (
                "memory.stat",
                "cache 100\nrss 10\ntotal_rss 2000\ntotal_inactive_file 1000\ntotal_pgfault 9\ntotal_pgmajfault 1\n",
            ),
            ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
        ],
    );
    touch(&root.join("pids/pod/c"), &[("pids.current", "4")]);
    let s = m.stats("/pod/c").unwrap();
    assert_eq!(s.cpu_usage_ns, Some(123456));
    assert_eq!(s.memory_working_set_bytes, Some(4000));
    assert_eq!(s.memory_rss_bytes, Some(2000));
    assert_eq!(s.oom_kills, Some(2));
    assert_eq!(s.pids_current, Some(4));
    assert_eq!(s.memory_available_bytes(), Some((64 << 20) - 4000));
    m.remove("/pod/c").unwrap();
    assert!(!root.join("memory/pod/c").exists());
    assert!(root.join("cpuset/pod").exists() && !root.join("memory/pod").exists(), "only skiff-made dirs removed");
    // nonexistent cgroup: stats NotFound
    assert_eq!(m.stats("/pod/c").unwrap_err().kind(), runtime::ErrorKind::NotFound);
    assert!(m.create("/a/../b").is_err());
}

fn real_v1_available() -> bool {
    let h = Hierarchies::detect().unwrap();
    common::prerequisite(h.mode() != CgroupMode::Unified, "cgroup v1 hierarchies")
        && common::prerequisite(nix::unistd::geteuid().is_root(), "root")
}

#[test]
fn v1_real() {
    if !real_v1_available() {
        return;
    }
    let base = format!("/skiff-test-{}", uniq());
    let path = format!("{base}/pod/ctr");
    let m = CgroupManager::detect(None).unwrap();
    let h = m.hierarchies().clone();
    m.create(&path).unwrap();
    let guard = Cleanup(&m, path.clone(), base.clone());
    let r = LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().shares(256u64).quota(20_000i64).period(100_000u64).cpus("0").build().unwrap())
        .memory(LinuxMemoryBuilder::default().limit(32i64 << 20).build().unwrap())
        .pids(LinuxPidsBuilder::default().limit(50i64).build().unwrap())
        .build()
        .unwrap();
    m.apply(&path, &r).unwrap();
    let rel = path.trim_start_matches('/');
    if let Some(dev) = h.v1_mount("devices") {
        let rules = vec![
            oci_spec::runtime::LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().unwrap(),
            oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(oci_spec::runtime::LinuxDeviceType::C)
                .major(1i64)
                .minor(3i64)
                .access("rwm")
                .build()
                .unwrap(),
        ];
        let dr = LinuxResourcesBuilder::default().devices(rules).build().unwrap();
        m.apply(&path, &dr).unwrap();
        assert_eq!(rd(dev.join(rel).join("devices.list")).trim(), "c 1:3 rwm");
        // Several rules through each file (opened once), in order: a deny after the allows.
        let dev_rule = |allow: bool, major: Option<i64>, minor: Option<i64>| {
            let mut b = oci_spec::runtime::LinuxDeviceCgroupBuilder::default();
            b = b.allow(allow).typ(oci_spec::runtime::LinuxDeviceType::C).access("rwm");
            if let Some(m) = major {
                b = b.major(m);
            }
            if let Some(m) = minor {
                b = b.minor(m);
            }
            b.build().unwrap()
        };
        let rules = vec![
            oci_spec::runtime::LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().unwrap(),
            dev_rule(true, Some(1), Some(3)),
            dev_rule(true, Some(1), Some(5)),
            dev_rule(true, Some(136), None),
            dev_rule(false, Some(1), Some(5)),
        ];
        m.apply(&path, &LinuxResourcesBuilder::default().devices(rules).build().unwrap()).unwrap();
        assert_eq!(rd(dev.join(rel).join("devices.list")).trim(), "c 1:3 rwm\nc 136:* rwm");
    }
    let cpu = h.v1_mount("cpu").unwrap().join(rel);
    assert_eq!(rd(cpu.join("cpu.shares")).trim(), "256");
    assert_eq!(rd(cpu.join("cpu.cfs_quota_us")).trim(), "20000");
    let mem = h.v1_mount("memory").unwrap().join(rel);
    assert_eq!(rd(mem.join("memory.limit_in_bytes")).trim(), (32u64 << 20).to_string());
    let pids = h.v1_mount("pids").unwrap().join(rel);
    assert_eq!(rd(pids.join("pids.max")).trim(), "50");
    // raise the limit again (memsw ordering)
    let r2 = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(256i64 << 20).build().unwrap())
        .build()
        .unwrap();
    m.apply(&path, &r2).unwrap();
    assert_eq!(rd(mem.join("memory.limit_in_bytes")).trim(), (256u64 << 20).to_string());
    // memory+swap in both directions (the write order matters to the kernel)
    if mem.join("memory.memsw.limit_in_bytes").exists() {
        for (l, sw) in [(64i64 << 20, 64i64 << 20), (512 << 20, 1024 << 20), (32 << 20, 32 << 20), (128 << 20, -1)] {
            let r3 = LinuxResourcesBuilder::default()
                .memory(LinuxMemoryBuilder::default().limit(l).swap(sw).build().unwrap())
                .build()
                .unwrap();
            m.apply(&path, &r3).unwrap();
            assert_eq!(rd(mem.join("memory.limit_in_bytes")).trim(), l.to_string());
            if sw > 0 {
                assert_eq!(rd(mem.join("memory.memsw.limit_in_bytes")).trim(), sw.to_string());
            }
        }
    }

    // a process joins, is counted, is killed
    let mut child = std::process::Command::new("sleep").arg("100").spawn().unwrap();
    let pid = child.id() as i32;
    cgroups::join(&path, pid).unwrap();
    assert_eq!(m.procs(&path).unwrap(), vec![pid]);
    let own = rd(PathBuf::from(format!("/proc/{pid}/cgroup")));
    assert!(own.contains(&format!(":memory:{path}")), "{own}");
    let s = m.stats(&path).unwrap();
    assert_eq!(s.pids_current, Some(1));
    assert!(s.memory_usage_bytes.is_some());
    assert!(s.cpu_usage_ns.is_some());
    assert_eq!(m.oom_kills(&path).unwrap(), 0);
    // remove refuses while the process lives, at once and touching nothing
    let t = std::time::Instant::now();
    let err = m.remove(&path).unwrap_err();
    assert!(matches!(err, cgroups::CgroupError::Busy { remaining: 1, .. }), "{err:?}");
    assert!(t.elapsed() < std::time::Duration::from_millis(100), "no retries: {:?}", t.elapsed());
    assert!(m.exists(&path).unwrap() && m.created_by_skiff(&path).unwrap());
    for hh in &h.v1 {
        assert!(hh.mountpoint.join(path.trim_start_matches('/')).is_dir(), "{}", hh.mountpoint.display());
    }
    m.kill_all(&path).unwrap();
    let st = child.wait().unwrap();
    assert!(!st.success());
    assert!(m.procs(&path).unwrap().is_empty());
    drop(guard);
    for hh in &h.v1 {
        assert!(!hh.mountpoint.join(base.trim_start_matches('/')).exists(), "{}", hh.mountpoint.display());
    }
    // join into a missing cgroup is NotFound
    assert_eq!(cgroups::join(&path, pid).unwrap_err().kind(), runtime::ErrorKind::NotFound);
}

struct Cleanup<'a>(&'a CgroupManager, String, String);
impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill_all(&self.1);
        self.0.remove(&self.1).unwrap();
        assert!(!self.0.exists(&self.2).unwrap());
    }
}

#[test]
fn v1_real_oom_counter() {
    if !real_v1_available() {
        return;
    }
    let path = format!("/skiff-test-{}/oom", uniq());
    let m = CgroupManager::detect(None).unwrap();
    m.create(&path).unwrap();
    let guard = Cleanup(&m, path.clone(), path.rsplit_once('/').unwrap().0.to_string());
    let r = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(8i64 << 20).swap(8i64 << 20).build().unwrap())
        .build()
        .unwrap();
    m.apply(&path, &r).unwrap();
    let mut child = std::process::Command::new("sh")
        .args(["-c", "sleep 0.3; exec dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null"])
        .spawn()
        .unwrap();
    cgroups::join(&path, child.id() as i32).unwrap();
    let st = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(9), "dd was OOM-killed: {st:?}");
    assert_eq!(m.oom_kills(&path).unwrap(), 1);
    assert_eq!(m.stats(&path).unwrap().oom_kills, Some(1));
    drop(guard);
}

/// The host's cgroup2 mount has no useful controller, but creation, join, cgroup.kill, freeze and
/// removal work there for real. The test root is a dir this test creates below it.
#[test]
fn v2_real_without_controllers() {
    let h = Hierarchies::detect().unwrap();
    let Some(unified) = h.unified.clone() else { return };
    if !common::prerequisite(nix::unistd::geteuid().is_root(), "root") {
        return;
    }
    let base = unified.join(format!("skiff-v2test-{}", uniq()));
    std::fs::create_dir(&base).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            // on failure: kill what is left and remove the dirs, deepest first
            let m = CgroupManager::new(Hierarchies::unified_at(&self.0), None).unwrap();
            let _ = m.kill_all("/pod");
            for d in ["pod/ctr", "pod", ""] {
                let _ = std::fs::remove_dir(self.0.join(d));
            }
        }
    }
    let _rm = Rm(base.clone());
    let m = CgroupManager::new(Hierarchies::unified_at(&base), None).unwrap();
    m.create("/pod/ctr").unwrap();
    let mut child =
        std::process::Command::new("sh").args(["-c", "sleep 0.3; sleep 100 & sleep 100; wait"]).spawn().unwrap();
    runtime::cgroups::join_in(m.hierarchies(), "/pod/ctr", child.id() as i32).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    let procs = m.procs("/pod/ctr").unwrap();
    assert!(procs.contains(&(child.id() as i32)));
    assert!(procs.len() >= 2, "children forked after the join are inside too: {procs:?}");
    assert!(m.procs("/pod").unwrap().len() >= 2, "a pod sees its containers' processes");
    assert!(m.stats("/pod/ctr").unwrap().cpu_usage_ns.is_some());
    assert!(m.remove("/pod/ctr").is_err(), "busy");
    m.kill_all("/pod/ctr").unwrap();
    child.wait().unwrap();
    assert!(m.procs("/pod/ctr").unwrap().is_empty());
    m.remove("/pod/ctr").unwrap();
    assert!(!base.join("pod").exists());
}

/// v2 device rules as an eBPF program, for real on the host's cgroup2 mount.
#[test]
fn v2_real_device_filter() {
    let h = Hierarchies::detect().unwrap();
    let Some(unified) = h.unified.clone() else { return };
    if !common::prerequisite(nix::unistd::geteuid().is_root(), "root") {
        return;
    }
    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType};
    let base = unified.join(format!("skiff-v2dev-{}", uniq()));
    std::fs::create_dir(&base).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let m = CgroupManager::new(Hierarchies::unified_at(&self.0), None).unwrap();
            let _ = m.kill_all("/c");
            let _ = std::fs::remove_dir(self.0.join("c"));
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _rm = Rm(base.clone());
    let m = CgroupManager::new(Hierarchies::unified_at(&base), None).unwrap();
    m.create("/c").unwrap();
    let rule = |allow: bool, maj: Option<i64>, min: Option<i64>, acc: &str| {
        let mut b = LinuxDeviceCgroupBuilder::default().allow(allow).access(acc.to_string());
        if maj.is_some() {
            b = b.typ(LinuxDeviceType::C);
        }
        if let Some(x) = maj {
            b = b.major(x);
        }
        if let Some(x) = min {
            b = b.minor(x);
        }
        b.build().unwrap()
    };
    // deny all, allow /dev/zero (1:5) fully and /dev/null (1:3) read-only
    let rules =
        vec![rule(false, None, None, "rwm"), rule(true, Some(1), Some(5), "rwm"), rule(true, Some(1), Some(3), "r")];
    let res = LinuxResourcesBuilder::default().devices(rules).build().unwrap();
    m.apply("/c", &res).unwrap();
    let run = |m: &CgroupManager| {
        let child = std::process::Command::new("sh")
            .args(["-c", "sleep 0.3; head -c1 /dev/zero | wc -c; cat /dev/null && echo null-read-ok; (echo x > /dev/null) 2>/dev/null || echo null-write-denied; (head -c1 /dev/urandom | wc -c) 2>/dev/null || echo urandom-denied"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        runtime::cgroups::join_in(m.hierarchies(), "/c", child.id() as i32).unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    let out = run(&m);
    assert!(out.contains("1\n"), "{out}");
    assert!(out.contains("null-read-ok"), "{out}");
    assert!(out.contains("null-write-denied"), "{out}");
    assert!(out.contains("urandom-denied"), "{out}");
    // applying again replaces the program: now everything is allowed
    let res = LinuxResourcesBuilder::default().devices(vec![rule(true, None, None, "rwm")]).build().unwrap();
    m.apply("/c", &res).unwrap();
    let out = run(&m);
    assert!(!out.contains("denied"), "{out}");
    m.remove("/c").unwrap();
}

/// Removing a cgroup that still has child cgroups fails at once (no retry loop under the lock).
#[test]
fn v1_real_remove_with_children_fails_fast() {
    if !real_v1_available() {
        return;
    }
    let base = format!("/skiff-test-{}", uniq());
    let m = CgroupManager::detect(None).unwrap();
    m.create(&format!("{base}/pod")).unwrap();
    m.create(&format!("{base}/pod/ctr")).unwrap();
    let t = std::time::Instant::now();
    let busy = m.remove(&format!("{base}/pod"));
    let took = t.elapsed();
    m.remove(&format!("{base}/pod/ctr")).unwrap();
    m.remove(&format!("{base}/pod")).unwrap();
    assert!(!m.exists(&base).unwrap());
    assert!(busy.is_err());
    assert!(took < std::time::Duration::from_millis(500), "{took:?}");
}

/// `signal_all` SIGKILLs every process of a v1 cgroup at once, without freezing or waiting;
/// a cgroup that does not exist has nothing to signal.
#[test]
fn v1_real_signal_all() {
    if !real_v1_available() {
        return;
    }
    let path = format!("/skiff-test-{}/sig", uniq());
    let m = CgroupManager::detect(None).unwrap();
    m.create(&path).unwrap();
    let guard = Cleanup(&m, path.clone(), path.rsplit_once('/').unwrap().0.to_string());
    let mut a = std::process::Command::new("sleep").arg("100").spawn().unwrap();
    let mut b = std::process::Command::new("sleep").arg("100").spawn().unwrap();
    cgroups::join(&path, a.id() as i32).unwrap();
    cgroups::join(&path, b.id() as i32).unwrap();
    m.signal_all(&path).unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(a.wait().unwrap().signal(), Some(9));
    assert_eq!(b.wait().unwrap().signal(), Some(9));
    assert!(m.procs(&path).unwrap().is_empty());
    m.signal_all(&format!("{path}-missing")).unwrap();
    drop(guard);
}

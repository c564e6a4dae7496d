//! Measures (not a test) the pod and container lifecycle RPCs and ListContainerStats of one or
//! more CRI runtimes in one run, interleaved round by round so that the machine's load falls on
//! all of them alike:
//!
//! - sequential: `ROUNDS` whole lifecycles (RunPodSandbox, CreateContainer, StartContainer,
//!   StopContainer with timeout 0, RemoveContainer, StopPodSandbox, RemovePodSandbox, then a
//!   Version call: an RPC that does no work, i.e. the round trip under them all), median and
//!   p90 of each RPC;
//! - parallel: the same with 8 clients at once (`ROUNDS` lifecycles each batch, 8 per batch);
//! - 100 pods with one container each, started 8 at a time (wall time), then ListContainerStats
//!   over the 100 running containers (median and p90 of 20 calls, after one untimed call), then
//!   the 100 torn down 8 at a time (wall time).
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p skiff-tests --example cri_bench -- [--rounds N] [--pods N] [--reps N]
//!     [--no-skiff] [--cri NAME=SOCKET[,CGROUP_PARENT]]... [--logs DIR]
//! ```
//!
//! Without `--no-skiff` it starts a skiffd of the release build on temp dirs (bridge `skpf0`,
//! 10.233.0.0/24, cgroup parent `/skiff-perf`); each `--cri` adds a runtime already listening
//! on SOCKET (e.g. a containerd with its CRI plugin), whose pods get CGROUP_PARENT. Each runtime
//! must have busybox (`registry.k8s.io/e2e-test-images/busybox:1.29-2`) pullable. Needs root and
//! the test registry, like the tests. Pods are kubelet-like: PID namespace per container,
//! `linux.cgroup_parent` set, a log directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proto::cri::runtime_service_client::RuntimeServiceClient;
use skiff_tests::pods::{self, BUSYBOX};
use skiff_tests::{cri, Daemon};
use tonic::transport::Channel;

const STEPS: [&str; 8] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
    "Version (no work: the gRPC round trip)",
];

struct Target {
    name: String,
    channel: Channel,
    cgroup_parent: String,
    logs: PathBuf,
}

impl Target {
    fn rt(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
}

fn pod_config(t: &Target, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: t.logs.join(name).display().to_string(),
        labels: HashMap::from([("bench".into(), "1".into())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            // One cgroup per pod beneath the target's parent, as the kubelet's pod cgroups.
            cgroup_parent: format!("{}/pod-{name}", t.cgroup_parent),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// busybox `sleep 3600` with a PID namespace of its own, logging to `c.log`: the tests' container
/// config without its label.
fn container_config() -> cri::ContainerConfig {
    let mut c = pods::container_config("c", &["sleep", "3600"]);
    c.labels.clear();
    c
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// "median / p90 (n)" in ms.
fn med_p90(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let p90 = v[((v.len() * 9).div_ceil(10)).saturating_sub(1)];
    format!("{:.1} / {:.1}", v[v.len() / 2], p90)
}

/// Runs pod + container up to StartContainer; returns (pod, container, the three times).
async fn up(t: &Target, name: &str) -> (String, String, [Duration; 3]) {
    let mut rt = t.rt();
    let pc = pod_config(t, name);
    let t0 = Instant::now();
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(pc.clone()), runtime_handler: String::new() })
        .await
        .unwrap_or_else(|e| panic!("{}: RunPodSandbox: {e:?}", t.name))
        .into_inner()
        .pod_sandbox_id;
    let t1 = Instant::now();
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config()),
            sandbox_config: Some(pc),
        })
        .await
        .unwrap_or_else(|e| panic!("{}: CreateContainer: {e:?}", t.name))
        .into_inner()
        .container_id;
    let t2 = Instant::now();
    rt.start_container(cri::StartContainerRequest { container_id: id.clone() })
        .await
        .unwrap_or_else(|e| panic!("{}: StartContainer: {e:?}", t.name));
    let t3 = Instant::now();
    (pod, id, [t1 - t0, t2 - t1, t3 - t2])
}

/// Stop and remove container and pod; returns the four times.
async fn down(t: &Target, pod: String, id: String) -> [Duration; 4] {
    let mut rt = t.rt();
    let t0 = Instant::now();
    rt.stop_container(cri::StopContainerRequest { container_id: id.clone(), timeout: 0 })
        .await
        .unwrap_or_else(|e| panic!("{}: StopContainer: {e:?}", t.name));
    let t1 = Instant::now();
    rt.remove_container(cri::RemoveContainerRequest { container_id: id })
        .await
        .unwrap_or_else(|e| panic!("{}: RemoveContainer: {e:?}", t.name));
    let t2 = Instant::now();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() })
        .await
        .unwrap_or_else(|e| panic!("{}: StopPodSandbox: {e:?}", t.name));
    let t3 = Instant::now();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod })
        .await
        .unwrap_or_else(|e| panic!("{}: RemovePodSandbox: {e:?}", t.name));
    let t4 = Instant::now();
    [t1 - t0, t2 - t1, t3 - t2, t4 - t3]
}

async fn lifecycle(t: &Target, name: &str) -> [Duration; 8] {
    let (pod, id, a) = up(t, name).await;
    let b = down(t, pod, id).await;
    // The floor under every RPC above: an RPC whose handler does nothing, called as they are
    // (right after the previous answer).
    let t0 = Instant::now();
    t.rt()
        .version(cri::VersionRequest { version: "v1".into() })
        .await
        .unwrap_or_else(|e| panic!("{}: Version: {e:?}", t.name));
    [a[0], a[1], a[2], b[0], b[1], b[2], b[3], t0.elapsed()]
}

#[derive(Default)]
struct Results {
    seq: Vec<Vec<f64>>,
    par: Vec<Vec<f64>>,
    pods_up: Vec<f64>,
    pods_down: Vec<f64>,
    stats: Vec<f64>,
    stats_first: Vec<f64>,
}

/// Runs `n` pods at most 8 at a time through `f`; returns the wall time.
async fn eight_at_a_time<F, Fut, T>(n: usize, f: F) -> (Duration, Vec<T>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    use futures::StreamExt;
    let t0 = Instant::now();
    let out: Vec<T> = futures::stream::iter((0..n).map(|i| tokio::spawn(f(i))))
        .buffer_unordered(8)
        .map(|r| r.unwrap())
        .collect()
        .await;
    (t0.elapsed(), out)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var_os("SKIFF_BIN_DIR").is_none() {
        if let Some(dir) = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.parent()?.to_owned())) {
            std::env::set_var("SKIFF_BIN_DIR", dir);
        }
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut rounds, mut npods, mut reps, mut skiff) = (20usize, 100usize, 2usize, true);
    let mut external = Vec::new();
    let mut logs_in = PathBuf::from("/tmp");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => rounds = it.next().and_then(|s| s.parse().ok()).expect("--rounds N"),
            "--pods" => npods = it.next().and_then(|s| s.parse().ok()).expect("--pods N"),
            "--reps" => reps = it.next().and_then(|s| s.parse().ok()).expect("--reps N"),
            "--no-skiff" => skiff = false,
            "--logs" => logs_in = it.next().expect("--logs DIR").into(),
            "--cri" => external.push(it.next().expect("--cri NAME=SOCKET[,CGROUP_PARENT]").clone()),
            other => panic!("unknown argument {other}"),
        }
    }
    let logs = tempfile::Builder::new().prefix("cri-bench-").tempdir_in(&logs_in).expect("tempdir");
    let mut targets = Vec::new();
    let daemon = if skiff {
        let d = Daemon::start_with_config(
            "log_level = \"info\"\n[runtime]\ndefault_cgroup_parent = \"/skiff-perf\"\n[network]\nbridge = \"skpf0\"\npod_cidr = \"10.233.0.0/24\"\n",
        )
        .await;
        println!("skiffd from {} (pid {:?})", skiff_tests::bin_dir().display(), d.pid());
        targets.push(Target {
            name: "skiff".into(),
            channel: skiff_tests::connect(&d.socket()).await.expect("connect"),
            cgroup_parent: "/skiff-perf".into(),
            logs: logs.path().join("skiff"),
        });
        Some(d)
    } else {
        None
    };
    for e in &external {
        let (name, rest) = e.split_once('=').expect("--cri NAME=SOCKET");
        let (sock, cg) = rest.split_once(',').unwrap_or((rest, "/cri-bench"));
        let sock = sock.strip_prefix("unix://").unwrap_or(sock);
        targets.push(Target {
            name: name.into(),
            channel: skiff_tests::connect(sock.as_ref()).await.expect("connect"),
            cgroup_parent: cg.into(),
            logs: logs.path().join(name),
        });
    }
    for t in &targets {
        let mut images = proto::cri::image_service_client::ImageServiceClient::new(t.channel.clone());
        images
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec { image: BUSYBOX.into(), ..Default::default() }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{}: pull: {e:?}", t.name));
        // Warm-up: one lifecycle (the sandbox image is pulled here where a runtime needs one).
        lifecycle(t, "warmup").await;
    }
    let mut res: Vec<Results> = targets
        .iter()
        .map(|_| Results {
            seq: vec![Vec::new(); STEPS.len()],
            par: vec![Vec::new(); STEPS.len()],
            ..Default::default()
        })
        .collect();

    println!("sequential: {rounds} lifecycles per runtime");
    for round in 0..rounds {
        for (t, r) in targets.iter().zip(res.iter_mut()) {
            for (i, d) in lifecycle(t, &format!("s{round}")).await.iter().enumerate() {
                r.seq[i].push(ms(*d));
            }
        }
    }
    let batches = rounds.div_ceil(8).max(2);
    println!("parallel: {batches} batches of 8 concurrent lifecycles per runtime");
    for batch in 0..batches {
        for (t, r) in targets.iter().zip(res.iter_mut()) {
            let mut tasks = Vec::new();
            for k in 0..8 {
                let t = Target {
                    name: t.name.clone(),
                    channel: t.channel.clone(),
                    cgroup_parent: t.cgroup_parent.clone(),
                    logs: t.logs.clone(),
                };
                let name = format!("p{batch}-{k}");
                tasks.push(tokio::spawn(async move { lifecycle(&t, &name).await }));
            }
            for task in tasks {
                for (i, d) in task.await.unwrap().iter().enumerate() {
                    r.par[i].push(ms(*d));
                }
            }
        }
    }
    println!("{npods} pods, 8 at a time: {reps} repetitions per runtime");
    for rep in 0..reps {
        for (t, r) in targets.iter().zip(res.iter_mut()) {
            let shared = std::sync::Arc::new(Target {
                name: t.name.clone(),
                channel: t.channel.clone(),
                cgroup_parent: t.cgroup_parent.clone(),
                logs: t.logs.clone(),
            });
            let s = shared.clone();
            let (took, made) = eight_at_a_time(npods, move |i| {
                let s = s.clone();
                async move {
                    let (pod, id, _) = up(&s, &format!("m{rep}-{i}")).await;
                    (pod, id)
                }
            })
            .await;
            r.pods_up.push(took.as_secs_f64());
            let mut rt = t.rt();
            let t0 = Instant::now();
            let n = rt.list_container_stats(cri::ListContainerStatsRequest::default()).await.unwrap().into_inner();
            r.stats_first.push(ms(t0.elapsed()));
            assert_eq!(n.stats.len(), npods, "{}: ListContainerStats", t.name);
            for _ in 0..20 {
                let t0 = Instant::now();
                rt.list_container_stats(cri::ListContainerStatsRequest::default()).await.unwrap();
                r.stats.push(ms(t0.elapsed()));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let made = std::sync::Arc::new(std::sync::Mutex::new(made));
            let (s, m) = (shared.clone(), made.clone());
            let (took, _) = eight_at_a_time(npods, move |_| {
                let (s, m) = (s.clone(), m.clone());
                async move {
                    let next = m.lock().unwrap().pop();
                    if let Some((pod, id)) = next {
                        down(&s, pod, id).await;
                    }
                }
            })
            .await;
            r.pods_down.push(took.as_secs_f64());
        }
    }

    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    println!("\nmedian / p90 in ms (seq: {rounds} each; parallel 8: {} each)", batches * 8);
    print!("| RPC |");
    for n in &names {
        print!(" {n} seq | {n} par 8 |");
    }
    println!();
    for (i, step) in STEPS.iter().enumerate() {
        print!("| {step} |");
        for r in &res {
            print!(" {} | {} |", med_p90(&r.seq[i]), med_p90(&r.par[i]));
        }
        println!();
    }
    for (i, r) in res.iter().enumerate() {
        let mut up = r.pods_up.clone();
        up.sort_by(|a, b| a.total_cmp(b));
        let mut dn = r.pods_down.clone();
        dn.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{}: {npods} pods up (8 at a time) {:?} s, down {:?} s; ListContainerStats of {npods}: first {:?} ms, then median / p90 {} ms",
            names[i],
            up.iter().map(|x| (x * 100.0).round() / 100.0).collect::<Vec<_>>(),
            dn.iter().map(|x| (x * 100.0).round() / 100.0).collect::<Vec<_>>(),
            r.stats_first.iter().map(|x| x.round()).collect::<Vec<_>>(),
            med_p90(&r.stats)
        );
    }
    drop(daemon);
}

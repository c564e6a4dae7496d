//! Exec, Attach and PortForward through skiffd's streaming server, with the test clients of
//! `skiff_tests::streaming` (SPDY/3.1 and WebSocket): output, stdin and its EOF, a TTY and its
//! resize, exit codes, a dropped client killing the exec'd process, attach, port-forward into a
//! bridge pod and a host-network pod (several forwarded connections on one SPDY connection),
//! the RPCs' validation, and single-use, expiring tokens.

use std::time::{Duration, Instant};

use skiff_tests::pods::{container_config, pod_config, pod_namespaces, BUSYBOX, NGINX};
use skiff_tests::streaming::{self as st, SpdySession, WsSession};
use skiff_tests::{cri, processes_mentioning, Daemon};
use tonic::Code;

struct Env {
    d: Daemon,
    pod: String,
    ctr: String,
}

/// A daemon with a pod running a busybox container that sleeps.
async fn env(name: &str) -> Env {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, name);
    let pod = d.run_pod(&pc).await;
    let ctr = d.create_and_start(&pod, &pc, container_config("main", &["sleep", "100000"])).await;
    Env { d, pod, ctr }
}

fn exec_req(ctr: &str, cmd: &[&str], stdin: bool, tty: bool) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: ctr.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

async fn exec_url(d: &Daemon, req: cri::ExecRequest) -> String {
    d.runtime().exec(req).await.unwrap_or_else(|e| panic!("Exec: {e:?}")).into_inner().url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_spdy_echo_stdin_exit_code() {
    let e = env("spdyexec").await;
    // Output on stdout and stderr, exit 0.
    let url = exec_url(&e.d, exec_req(&e.ctr, &["sh", "-c", "echo hello; echo oops >&2"], false, false)).await;
    assert!(url.starts_with("http://127.0.0.1:") && url.contains("/exec/"), "{url}");
    let out = SpdySession::open(&url, false, true, true, false).await.finish().await;
    assert_eq!(out.stdout(), "hello\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(out.status, r#"{"metadata":{},"status":"Success"}"#);
    // stdin: cat echoes it, and the client's EOF ends it.
    let url = exec_url(&e.d, exec_req(&e.ctr, &["cat"], true, false)).await;
    let s = SpdySession::open(&url, true, true, true, false).await;
    s.send_stdin(b"line one\n", false).await;
    s.send_stdin(&vec![b'x'; 300_000], true).await;
    let out = s.finish().await;
    assert_eq!(out.stdout.len(), 9 + 300_000);
    assert!(out.stdout().starts_with("line one\nxxx"));
    assert_eq!(out.exit_code(), 0);
    // A non-zero exit code is reported as such.
    let url = exec_url(&e.d, exec_req(&e.ctr, &["sh", "-c", "exit 3"], false, false)).await;
    let out = SpdySession::open(&url, false, true, true, false).await.finish().await;
    assert_eq!(out.exit_code(), 3, "{}", out.status);
    // A command that does not exist fails with a message.
    let url = exec_url(&e.d, exec_req(&e.ctr, &["/no/such/cmd"], false, false)).await;
    let out = SpdySession::open(&url, false, true, true, false).await.finish().await;
    assert_eq!(out.status_json()["status"], "Failure", "{}", out.status);
    e.d.remove_pod(&e.pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_websocket() {
    let e = env("wsexec").await;
    // v5: output, then stdin with its close signal.
    let url = exec_url(&e.d, exec_req(&e.ctr, &["sh", "-c", "echo hello; exit 3"], false, false)).await;
    let mut ws = WsSession::open(&url, "v5.channel.k8s.io, v4.channel.k8s.io").await;
    assert_eq!(ws.protocol, "v5.channel.k8s.io");
    let got = ws.collect().await;
    assert_eq!(got.get(&1).map(|v| String::from_utf8_lossy(v).into_owned()).as_deref(), Some("hello\n"));
    let status: serde_json::Value = serde_json::from_slice(&got[&3]).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");

    let url = exec_url(&e.d, exec_req(&e.ctr, &["cat"], true, false)).await;
    let mut ws = WsSession::open(&url, "v5.channel.k8s.io").await;
    ws.send(0, b"via websocket\n").await;
    ws.send(255, &[0]).await;
    let got = ws.collect().await;
    assert_eq!(String::from_utf8_lossy(&got[&1]), "via websocket\n");
    assert_eq!(String::from_utf8_lossy(&got[&3]), r#"{"metadata":{},"status":"Success"}"#);

    // v4 without stdin: status JSON too.
    let url = exec_url(&e.d, exec_req(&e.ctr, &["echo", "four"], false, false)).await;
    let mut ws = WsSession::open(&url, "v4.channel.k8s.io").await;
    let got = ws.collect().await;
    assert_eq!(String::from_utf8_lossy(&got[&1]), "four\n");
    assert!(String::from_utf8_lossy(&got[&3]).contains("Success"));
    e.d.remove_pod(&e.pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_tty_and_resize() {
    let e = env("ttyexec").await;
    let url = exec_url(&e.d, exec_req(&e.ctr, &["sh", "-c", "stty size; read x; stty size"], true, true)).await;
    let mut s = SpdySession::open(&url, true, true, false, true).await;
    s.resize(100, 40).await;
    let mut out = s.stdout.take().unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains("40 100") {
        assert!(Instant::now() < deadline, "no size in {seen:?}");
        let b = tokio::time::timeout(Duration::from_secs(20), out.reader.read()).await.unwrap().expect("output");
        seen.push_str(&String::from_utf8_lossy(&b));
    }
    s.resize(120, 50).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.send_stdin(b"go\n", false).await;
    while !seen.contains("50 120") {
        assert!(Instant::now() < deadline, "no new size in {seen:?}");
        let b = tokio::time::timeout(Duration::from_secs(20), out.reader.read()).await.unwrap().expect("output");
        seen.push_str(&String::from_utf8_lossy(&b));
    }
    // A terminal: output lines end in CRLF.
    assert!(seen.contains("40 100\r\n"), "{seen:?}");
    s.stdout = Some(out);
    let out = s.finish().await;
    assert_eq!(out.exit_code(), 0);
    e.d.remove_pod(&e.pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_kills_the_exec() {
    let e = env("killexec").await;
    let marker = format!("{}", 50_000 + rand::random::<u16>() % 10_000);
    let url =
        exec_url(&e.d, exec_req(&e.ctr, &["sh", "-c", &format!("echo ready; exec sleep {marker}")], false, false))
            .await;
    let mut s = SpdySession::open(&url, false, true, true, false).await;
    let b = tokio::time::timeout(Duration::from_secs(20), s.stdout.as_mut().unwrap().reader.read()).await.unwrap();
    assert_eq!(b.as_deref(), Some(&b"ready\n"[..]));
    let needle = format!("sleep {marker}");
    assert!(!processes_mentioning(&needle).is_empty());
    s.conn.abort();
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !processes_mentioning(&needle).is_empty() {
        assert!(Instant::now() < deadline, "the exec'd process outlived its client");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The container itself is unharmed.
    assert_eq!(e.d.container_status(&e.ctr).await.state, cri::ContainerState::ContainerRunning as i32);
    e.d.remove_pod(&e.pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_to_a_container_printing_lines() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "attach");
    let pod = d.run_pod(&pc).await;
    let script = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done";
    let ctr = d.create_and_start(&pod, &pc, container_config("printer", &["sh", "-c", script])).await;
    let url = d
        .runtime()
        .attach(cri::AttachRequest { container_id: ctr.clone(), stdin: false, tty: false, stdout: true, stderr: true })
        .await
        .unwrap()
        .into_inner()
        .url;
    assert!(url.contains("/attach/"), "{url}");
    let mut s = SpdySession::open(&url, false, true, true, false).await;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.matches("line ").count() < 3 {
        assert!(Instant::now() < deadline, "attach saw {seen:?}");
        let b = tokio::time::timeout(Duration::from_secs(20), s.stdout.as_mut().unwrap().reader.read()).await.unwrap();
        seen.push_str(&String::from_utf8_lossy(&b.expect("output")));
    }
    s.conn.abort();
    drop(s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Detaching never stops the container.
    assert_eq!(d.container_status(&ctr).await.state, cri::ContainerState::ContainerRunning as i32);
    d.remove_pod(&pod).await;
}

async fn pf_url(d: &Daemon, pod: &str, ports: &[i32]) -> String {
    d.runtime()
        .port_forward(cri::PortForwardRequest { pod_sandbox_id: pod.into(), port: ports.to_vec() })
        .await
        .unwrap_or_else(|e| panic!("PortForward: {e:?}"))
        .into_inner()
        .url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_into_a_bridge_pod() {
    let d = Daemon::start().await;
    d.pull(NGINX).await;
    let pc = pod_config(&d, "pfweb");
    let pod = d.run_pod(&pc).await;
    let mut cc = container_config("web", &[]);
    cc.image = Some(cri::ImageSpec { image: NGINX.into(), ..Default::default() });
    cc.command.clear();
    d.create_and_start(&pod, &pc, cc).await;
    let url = pf_url(&d, &pod, &[80]).await;
    assert!(url.contains("/portforward/"), "{url}");
    let (conn, head) = st::spdy_connect(&url, &["portforward.k8s.io"]).await;
    assert!(head.to_ascii_lowercase().contains("x-stream-protocol-version: portforward.k8s.io"), "{head}");
    // The web server may take a moment to listen.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut id = 0;
    loop {
        let (reply, err) = st::forward_roundtrip(&conn, 80, id, b"GET / HTTP/1.0\r\n\r\n").await;
        id += 1;
        if err.is_empty() && String::from_utf8_lossy(&reply).starts_with("HTTP/1.") {
            break;
        }
        assert!(Instant::now() < deadline, "no answer: {err} {:?}", String::from_utf8_lossy(&reply));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Several forwarded connections at once on the same SPDY connection.
    let rounds = (0..6).map(|i| st::forward_roundtrip(&conn, 80, 100 + i, b"GET / HTTP/1.0\r\n\r\n"));
    for (reply, err) in futures::future::join_all(rounds).await {
        assert!(err.is_empty(), "{err}");
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.") && reply.contains("nginx"), "{reply}");
    }
    // A port nobody listens on: the reason comes on the error stream.
    let (reply, err) = st::forward_roundtrip(&conn, 81, 999, b"x").await;
    assert!(reply.is_empty());
    assert!(err.contains("81"), "{err}");
    drop(conn);

    // The same over WebSocket: the port prefix first on both channels, then the data.
    let url = pf_url(&d, &pod, &[80]).await;
    let mut ws = WsSession::open(&format!("{url}?port=80"), "v4.channel.k8s.io").await;
    assert_eq!(ws.protocol, "v4.channel.k8s.io");
    let mut prefixes = Vec::new();
    while prefixes.len() < 2 {
        let (ch, data) = ws.next_data().await.expect("port prefix");
        assert_eq!(&data[..], &80u16.to_le_bytes());
        prefixes.push(ch);
    }
    prefixes.sort();
    assert_eq!(prefixes, vec![0, 1]);
    ws.send(0, b"GET / HTTP/1.0\r\n\r\n").await;
    let got = ws.collect().await;
    let page = String::from_utf8_lossy(got.get(&0).map(|v| v.as_slice()).unwrap_or_default()).into_owned();
    assert!(page.starts_with("HTTP/1.") && page.contains("nginx"), "{page:?}");

    // SPDY tunnelled in WebSocket messages (client-go's WebSocket port-forward).
    let url = pf_url(&d, &pod, &[80]).await;
    let ws = WsSession::open(&url, "SPDY/3.1+portforward.k8s.io").await;
    assert_eq!(ws.protocol, "SPDY/3.1+portforward.k8s.io");
    let (bytes, pump) = cri_server::streaming::ws::tunnel(ws.ws);
    tokio::spawn(pump);
    let (conn, _incoming) =
        cri_server::streaming::spdy::Connection::new(bytes, cri_server::streaming::spdy::Role::Client).unwrap();
    let rounds = (0..3).map(|i| st::forward_roundtrip(&conn, 80, i, b"GET / HTTP/1.0\r\n\r\n"));
    for (reply, err) in futures::future::join_all(rounds).await {
        assert!(err.is_empty(), "{err}");
        assert!(String::from_utf8_lossy(&reply).contains("nginx"));
    }
    drop(conn);
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_into_a_host_network_pod() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let mut pc = pod_config(&d, "pfhost");
    pc.linux = pod_namespaces(cri::NamespaceOption { network: cri::NamespaceMode::Node as i32, ..Default::default() });
    let pod = d.run_pod(&pc).await;
    let port = 40_000 + rand::random::<u16>() % 20_000;
    let script = format!(
        "mkdir -p /www && echo hello-from-host-net > /www/index.html && exec httpd -f -p 127.0.0.1:{port} -h /www"
    );
    d.create_and_start(&pod, &pc, container_config("web", &["sh", "-c", &script])).await;
    let url = pf_url(&d, &pod, &[port as i32]).await;
    let (conn, _) = st::spdy_connect(&url, &["portforward.k8s.io"]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut id = 0;
    loop {
        let (reply, err) = st::forward_roundtrip(&conn, port, id, b"GET /index.html HTTP/1.0\r\n\r\n").await;
        id += 1;
        if String::from_utf8_lossy(&reply).contains("hello-from-host-net") {
            break;
        }
        assert!(Instant::now() < deadline, "no answer: {err} {:?}", String::from_utf8_lossy(&reply));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_validated_and_tokens_are_single_use() {
    let e = env("tokens").await;
    let mut rt = e.d.runtime();
    // The bound address is in Status's verbose info.
    let info = rt.status(cri::StatusRequest { verbose: true }).await.unwrap().into_inner().info;
    let server: serde_json::Value = serde_json::from_str(&info["streamingServer"]).unwrap();
    let addr = server["address"].as_str().unwrap().to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert_eq!(server["tls"], false);

    let code = |r: Result<tonic::Response<cri::ExecResponse>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(code(rt.exec(exec_req("nope", &["true"], false, false)).await), Code::NotFound);
    let mut none = exec_req(&e.ctr, &["true"], false, false);
    (none.stdout, none.stderr) = (false, false);
    assert_eq!(code(rt.exec(none).await), Code::InvalidArgument);
    assert_eq!(code(rt.exec(exec_req(&e.ctr, &[], false, false)).await), Code::InvalidArgument);
    // tty with stderr is accepted: stderr is merged into stdout (the CRI contract).
    let mut merged = exec_req(&e.ctr, &["sh", "-c", "echo to-stderr >&2"], false, true);
    merged.stderr = true;
    let url = rt.exec(merged).await.expect("tty with stderr").into_inner().url;
    let out = SpdySession::open(&url, false, true, false, true).await.finish().await;
    assert!(out.stdout().contains("to-stderr"), "{out:?}");
    let pf = rt.port_forward(cri::PortForwardRequest { pod_sandbox_id: "nope".into(), port: vec![80] }).await;
    assert_eq!(pf.unwrap_err().code(), Code::NotFound);
    let at = rt.attach(cri::AttachRequest { container_id: "nope".into(), stdout: true, ..Default::default() }).await;
    assert_eq!(at.unwrap_err().code(), Code::NotFound);

    // Unknown token; a token used twice.
    assert_eq!(st::upgrade_status(&format!("http://{addr}/exec/not-a-token")).await, 404);
    let url = exec_url(&e.d, exec_req(&e.ctr, &["true"], false, false)).await;
    assert!(url.starts_with(&format!("http://{addr}/exec/")), "{url}");
    let out = SpdySession::open(&url, false, true, true, false).await.finish().await;
    assert_eq!(out.exit_code(), 0);
    assert_eq!(st::upgrade_status(&url).await, 404);
    // Tokens are never logged (the harness logs at debug).
    let token = url.rsplit('/').next().unwrap();
    assert!(!e.d.log().contains(token), "the token is in skiffd's log");
    // A token is bound to its kind.
    let url = exec_url(&e.d, exec_req(&e.ctr, &["true"], false, false)).await;
    assert_eq!(st::upgrade_status(&url.replace("/exec/", "/attach/")).await, 404);

    // Not running: FailedPrecondition.
    rt.stop_container(cri::StopContainerRequest { container_id: e.ctr.clone(), timeout: 0 }).await.unwrap();
    assert_eq!(code(rt.exec(exec_req(&e.ctr, &["true"], false, false)).await), Code::FailedPrecondition);
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: e.pod.clone() }).await.unwrap();
    let pf = rt.port_forward(cri::PortForwardRequest { pod_sandbox_id: e.pod.clone(), port: vec![80] }).await;
    assert_eq!(pf.unwrap_err().code(), Code::FailedPrecondition);
    e.d.remove_pod(&e.pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_after_a_minute() {
    let d = Daemon::start().await;
    let pc = pod_config(&d, "expire");
    let pod = d.run_pod(&pc).await;
    let url = pf_url(&d, &pod, &[80]).await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(st::upgrade_status(&url).await, 404);
    d.remove_pod(&pod).await;
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_back_the_command() {
    let e = env("backpressure").await;
    const TOTAL: usize = 40 * 1000 * 1000;
    let marker = format!("{}", 1000 + rand::random::<u16>() % 9000);
    let cmd = format!("head -c {TOTAL} /dev/zero; : {marker}");
    let url = exec_url(&e.d, exec_req(&e.ctr, &["sh", "-c", &cmd], false, false)).await;
    let pid = e.d.pid().expect("skiffd pid");
    let before = rss_kib(pid);
    let mut s = SpdySession::open(&url, false, true, true, false).await;
    // Read nothing for a while: the command must stay blocked on its pipe, and skiffd must not
    // buffer what it cannot send.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 16 * 1024, "skiffd grew by {grown} KiB while the client read nothing");
    assert!(!processes_mentioning(&format!(": {marker}")).is_empty(), "the command finished unread");
    let mut n = 0;
    let out = s.stdout.as_mut().unwrap();
    while let Some(b) = tokio::time::timeout(Duration::from_secs(30), out.reader.read()).await.unwrap() {
        n += b.len();
    }
    assert_eq!(n, TOTAL);
    assert_eq!(s.finish().await.exit_code(), 0);
    e.d.remove_pod(&e.pod).await;
}

async fn wait_gone(needle: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !processes_mentioning(needle).is_empty() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_time_out_and_shutdown_ends_sessions() {
    let d = Daemon::start_with_config("[streaming]\nidle_timeout_secs = 2\n").await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "idle");
    let pod = d.run_pod(&pc).await;
    let ctr = d.create_and_start(&pod, &pc, container_config("main", &["sleep", "100000"])).await;
    // A session without traffic is closed after idle_timeout_secs; its command dies.
    let marker = format!("{}", 60_000 + rand::random::<u16>() % 5_000);
    let url = exec_url(&d, exec_req(&ctr, &["sleep", &marker], false, false)).await;
    let s = SpdySession::open(&url, false, true, true, false).await;
    let needle = format!("sleep {marker}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_mentioning(&needle).is_empty() {
        assert!(Instant::now() < deadline, "the command never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), s.conn.closed()).await.expect("the idle session is closed");
    assert!(t0.elapsed() >= Duration::from_secs(1), "closed before the idle timeout");
    wait_gone(&needle, "the idle session's command outlived it").await;
    drop(s);

    // skiffd's shutdown ends the sessions that run (a busy one here) and kills their commands.
    let mut d = d;
    let marker = format!("{}", 65_000 + rand::random::<u16>() % 500);
    let url = exec_url(
        &d,
        exec_req(&ctr, &["sh", "-c", &format!("while true; do echo {marker}; sleep 0.5; done")], false, false),
    )
    .await;
    let mut s = SpdySession::open(&url, false, true, true, false).await;
    let b = tokio::time::timeout(Duration::from_secs(10), s.stdout.as_mut().unwrap().reader.read()).await.unwrap();
    assert!(b.is_some());
    let needle = format!("echo {marker}");
    d.stop();
    tokio::time::timeout(Duration::from_secs(15), s.conn.closed()).await.expect("shutdown closes the session");
    wait_gone(&needle, "a session's command outlived skiffd's shutdown").await;
    d.start_again().await;
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base64_websocket_protocol() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let e = env("b64").await;
    let url = exec_url(&e.d, exec_req(&e.ctr, &["echo", "b64"], false, false)).await;
    let mut ws = WsSession::open(&url, "v4.base64.channel.k8s.io").await;
    assert_eq!(ws.protocol, "v4.base64.channel.k8s.io");
    let mut texts = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(20), ws.ws.next()).await {
        match m {
            Message::Text(t) => texts.push(t.to_string()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    // "1" + base64("b64\n"), and the status on channel "3".
    assert!(texts.contains(&"1YjY0Cg==".to_owned()), "{texts:?}");
    assert!(texts.iter().any(|t| t.starts_with('3')), "{texts:?}");
    e.d.remove_pod(&e.pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_with_stdin_over_websocket() {
    let d = Daemon::start().await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "attachin");
    let pod = d.run_pod(&pc).await;
    let mut cc = container_config("echoer", &["cat"]);
    cc.stdin = true;
    let ctr = d.create_and_start(&pod, &pc, cc).await;
    let url = d
        .runtime()
        .attach(cri::AttachRequest { container_id: ctr.clone(), stdin: true, tty: false, stdout: true, stderr: true })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut ws = WsSession::open(&url, "v5.channel.k8s.io").await;
    ws.send(0, b"through attach\n").await;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("through attach") {
        let (ch, data) = ws.next_data().await.expect("output");
        if ch == 1 {
            seen.extend_from_slice(&data);
        }
    }
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.container_status(&ctr).await.state, cri::ContainerState::ContainerRunning as i32);
    d.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_spdy_protocols_report_failures_as_text() {
    let e = env("oldproto").await;
    for (protocol, cmd, want) in [
        ("v3.channel.k8s.io", "echo ok", ""),
        ("v3.channel.k8s.io", "exit 3", "exit status 3"),
        ("v2.channel.k8s.io", "exit 4", "exit status 4"),
        ("channel.k8s.io", "echo ok", ""),
    ] {
        let url = exec_url(&e.d, exec_req(&e.ctr, &["sh", "-c", cmd], false, false)).await;
        let (conn, head) = st::spdy_connect(&url, &[protocol]).await;
        assert!(head.to_ascii_lowercase().contains(&format!("x-stream-protocol-version: {protocol}")), "{head}");
        let hdr = |t: &str| vec![("streamtype".to_owned(), vec![t.to_owned()])];
        let mut error = conn.open_stream(hdr("error")).await.unwrap();
        let mut stdout = conn.open_stream(hdr("stdout")).await.unwrap();
        let mut stderr = conn.open_stream(hdr("stderr")).await.unwrap();
        let mut status = Vec::new();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(b) = stdout.reader.read().await {
                out.extend_from_slice(&b);
            }
            while let Some(b) = stderr.reader.read().await {
                err.extend_from_slice(&b);
            }
            while let Some(b) = error.reader.read().await {
                status.extend_from_slice(&b);
            }
        })
        .await
        .expect("session ends");
        let status = String::from_utf8_lossy(&status);
        if want.is_empty() {
            assert!(status.is_empty(), "{protocol}: {status}");
            assert_eq!(out, b"ok\n");
        } else {
            assert!(status.contains(want), "{protocol}: {status}");
        }
    }
    e.d.remove_pod(&e.pod).await;
}

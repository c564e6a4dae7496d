//! The streaming server over TLS (`[streaming] tls_cert`/`tls_key`): https URLs, and an exec
//! through a client that trusts the (self-signed, made with openssl) certificate.

use std::process::Command;
use std::sync::Arc;

use cri_server::streaming::spdy::{Connection, Role};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use skiff_tests::pods::{container_config, pod_config, BUSYBOX};
use skiff_tests::streaming::{self as st, Output};
use skiff_tests::{cri, Daemon};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_https() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-subj", "/CN=skiff-test", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let d = Daemon::start_with_config(&format!(
        "[streaming]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    ))
    .await;
    d.pull(BUSYBOX).await;
    let pc = pod_config(&d, "tls");
    let pod = d.run_pod(&pc).await;
    let ctr = d.create_and_start(&pod, &pc, container_config("main", &["sleep", "100000"])).await;
    let url = d
        .runtime()
        .exec(cri::ExecRequest {
            container_id: ctr.clone(),
            cmd: vec!["echo".into(), "over tls".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let info = d.runtime().status(cri::StatusRequest { verbose: true }).await.unwrap().into_inner().info;
    assert!(info["streamingServer"].contains("\"tls\":true"), "{}", info["streamingServer"]);

    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&cert).unwrap()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (host, path) = st::split_url(&url);
    let tcp = TcpStream::connect(&host).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS handshake");
    let h = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "v4.channel.k8s.io")];
    let (code, head, tls) = st::request_on(tls, &host, &path, &h).await;
    assert_eq!(code, 101, "{head}");
    let (conn, _incoming) = Connection::new(tls, Role::Client).unwrap();
    let hdr = |t: &str| vec![("streamtype".to_owned(), vec![t.to_owned()])];
    let mut error = conn.open_stream(hdr("error")).await.unwrap();
    let mut stdout = conn.open_stream(hdr("stdout")).await.unwrap();
    let mut out = Output::default();
    while let Some(b) = stdout.reader.read().await {
        out.stdout.extend_from_slice(&b);
    }
    while let Some(b) = error.reader.read().await {
        out.status.push_str(&String::from_utf8_lossy(&b));
    }
    assert_eq!(out.stdout(), "over tls\n");
    assert_eq!(out.exit_code(), 0);
    // Plain HTTP on the TLS port gets nowhere.
    let (code, _, _) = st::request(&url.replace("https://", "http://"), &h).await;
    assert_ne!(code, 101);
    d.remove_pod(&pod).await;
}

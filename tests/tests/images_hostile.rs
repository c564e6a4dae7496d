//! Hostile registries and layers, served by a tiny registry inside the test: every case fails
//! or succeeds as specified, nothing appears outside the image store, a failed pull leaves the
//! store exactly as it was, and skiffd keeps serving.

mod images_support;

use std::path::Path;

use images_support::{marker, store_files, MiniRegistry, Serve, TarBuilder};
use skiff_tests::cri::*;
use skiff_tests::Daemon;

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec { image: image.into(), ..Default::default() })
}

async fn try_pull(d: &Daemon, image: &str, auth: Option<AuthConfig>) -> Result<String, tonic::Status> {
    d.images()
        .pull_image(PullImageRequest { image: spec(image), auth, ..Default::default() })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn still_serves(d: &Daemon) {
    d.images().list_images(ListImagesRequest::default()).await.expect("skiffd still serves");
    d.images().image_fs_info(ImageFsInfoRequest {}).await.expect("skiffd still serves");
}

fn passwd_hash() -> String {
    images_support::sha256(&std::fs::read("/etc/passwd").unwrap())
}

/// A base image present in the store, so that "unchanged" is checked against a non-empty store.
async fn seeded(reg: &MiniRegistry, d: &Daemon) {
    reg.push_image("good/base", "1", &[TarBuilder::new().dir("etc/").file("etc/hello", b"hi").build()], &[], None);
    try_pull(d, &format!("{}/good/base:1", reg.host()), None).await.expect("seed pull");
}

/// Pull must fail with `code` (and mention `needle`), leaving the store unchanged.
async fn expect_failure(d: &Daemon, image: &str, code: tonic::Code, needle: &str) {
    let before = store_files(&d.root());
    let e = try_pull(d, image, None).await.expect_err("pull must fail");
    assert_eq!(e.code(), code, "{image}: {e}");
    assert!(e.message().contains(needle), "{image}: {:?} should mention {needle:?}", e.message());
    assert_eq!(store_files(&d.root()), before, "store changed by failed pull of {image}");
    still_serves(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_content_fails_and_keeps_the_store() {
    let reg = MiniRegistry::start().await;
    let d = Daemon::start_with_config("[registry]\nstall_timeout_secs = 2\n").await;
    seeded(&reg, &d).await;
    let h = reg.host();
    let layer = |s: &str| TarBuilder::new().file(s, s.as_bytes()).build();

    reg.push_image("bad/mismatch", "1", &[layer("a"), layer("b")], &[Serve::Normal, Serve::WrongBytes], None);
    expect_failure(&d, &format!("{h}/bad/mismatch:1"), tonic::Code::DataLoss, "digest mismatch").await;

    reg.push_image("bad/short", "1", &[layer("c")], &[Serve::CutShort], None);
    let e = try_pull(&d, &format!("{h}/bad/short:1"), None).await.unwrap_err();
    assert!(matches!(e.code(), tonic::Code::Unavailable | tonic::Code::DataLoss), "{e}");
    assert!(e.message().contains("short") || e.message().contains("size") || e.message().contains("reading"), "{e}");

    reg.put_manifest("bad/notjson", "1", "application/vnd.oci.image.manifest.v1+json", b"<html>hello</html>".to_vec());
    expect_failure(&d, &format!("{h}/bad/notjson:1"), tonic::Code::DataLoss, "not JSON").await;

    reg.push_image("bad/config", "1", &[layer("d")], &[], Some(b"this is not json".to_vec()));
    expect_failure(&d, &format!("{h}/bad/config:1"), tonic::Code::DataLoss, "image config").await;

    let schema1 = br#"{"schemaVersion": 1, "name": "bad/s1", "tag": "1", "fsLayers": [], "history": []}"#;
    reg.put_manifest("bad/s1", "1", "application/vnd.docker.distribution.manifest.v1+prettyjws", schema1.to_vec());
    expect_failure(&d, &format!("{h}/bad/s1:1"), tonic::Code::FailedPrecondition, "schema 1").await;

    // The digest asked for is not what the registry serves.
    let m = reg.push_image("bad/pinned", "1", &[layer("e")], &[], None);
    reg.put_manifest("bad/pinned", &m, "application/vnd.oci.image.manifest.v1+json", b"{}".to_vec());
    expect_failure(&d, &format!("{h}/bad/pinned@{m}"), tonic::Code::DataLoss, "digest mismatch").await;

    reg.push_image("bad/stall", "1", &[layer("f")], &[Serve::Stall], None);
    expect_failure(&d, &format!("{h}/bad/stall:1"), tonic::Code::Unavailable, "no bytes received for 2s").await;
    let before = store_files(&d.root());
    assert_eq!(store_files(&d.root()), before);
    assert_eq!(std::fs::read_dir(d.root().join("content/ingest")).unwrap().count(), 0, "ingest cleaned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_stay_inside_the_layer() {
    let reg = MiniRegistry::start().await;
    let d = Daemon::start().await;
    let h = reg.host();
    let pw = passwd_hash();

    // `../` entries and absolute paths: resolved inside the layer (as containerd does).
    let m1 = marker("dotdot");
    let l = TarBuilder::new()
        .file(&format!("../../../../../../tmp/{m1}"), b"x")
        .file(&format!("/tmp/{m1}-abs"), b"x")
        .build();
    reg.push_image("evil/dotdot", "1", &[l], &[], None);
    try_pull(&d, &format!("{h}/evil/dotdot:1"), None).await.expect("../ entries are clamped inside");
    assert!(!Path::new("/tmp").join(&m1).exists() && !Path::new("/tmp").join(format!("{m1}-abs")).exists());

    // A symlink to /tmp, then a file beneath it: same layer…
    let m2 = marker("symlink");
    let l = TarBuilder::new().symlink("evil", "/tmp").file(&format!("evil/{m2}"), b"x").build();
    reg.push_image("evil/symlink", "1", &[l], &[], None);
    try_pull(&d, &format!("{h}/evil/symlink:1"), None).await.expect("resolved inside the layer");
    assert!(!Path::new("/tmp").join(&m2).exists(), "escaped through a symlink");
    // …and in a later layer.
    let m3 = marker("symlink-later");
    let l1 = TarBuilder::new().symlink("evil", "/tmp").symlink("up", "../../../../../..").build();
    let l2 = TarBuilder::new().file(&format!("evil/{m3}"), b"x").file(&format!("up/tmp/{m3}-up"), b"x").build();
    reg.push_image("evil/symlink2", "1", &[l1, l2], &[], None);
    try_pull(&d, &format!("{h}/evil/symlink2:1"), None).await.expect("later layer stays inside");
    assert!(!Path::new("/tmp").join(&m3).exists() && !Path::new("/tmp").join(format!("{m3}-up")).exists());
    // The files landed in the snapshots.
    let found = walk_names(&d.root().join("snapshots"));
    for m in [&m1, &m2, &m3] {
        assert!(found.iter().any(|n| n.contains(m.as_str())), "{m} not inside the store");
    }

    // A hard link to /etc/passwd: the pull fails naming the entry.
    let before = store_files(&d.root());
    let l = TarBuilder::new().file("ok", b"1").hardlink("stolen-passwd", "/etc/passwd").build();
    reg.push_image("evil/hardlink", "1", &[l], &[], None);
    let e = try_pull(&d, &format!("{h}/evil/hardlink:1"), None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e}");
    assert!(e.message().contains("stolen-passwd") && e.message().contains("/etc/passwd"), "{e}");
    assert_eq!(store_files(&d.root()), before, "failed pull left something");
    // Through a symlinked directory as well.
    let l = TarBuilder::new().symlink("etc2", "/etc").hardlink("pw2", "etc2/passwd").build();
    reg.push_image("evil/hardlink2", "1", &[l], &[], None);
    let e = try_pull(&d, &format!("{h}/evil/hardlink2:1"), None).await.unwrap_err();
    assert!(e.message().contains("pw2"), "{e}");
    assert_eq!(store_files(&d.root()), before);

    assert_eq!(passwd_hash(), pw, "/etc/passwd untouched");
    let links = walk_names(&d.root());
    assert!(!links.iter().any(|n| n.contains("stolen-passwd")));
    still_serves(&d).await;
}

fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&p) {
            for e in rd.flatten() {
                out.push(e.path().display().to_string());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_flow() {
    let reg = MiniRegistry::start().await;
    reg.require_auth("alice", "s3cr3t-pass");
    let d = Daemon::start().await;
    let h = reg.host();
    reg.push_image("private/app", "1", &[TarBuilder::new().file("f", b"1").build()], &[], None);
    let image = format!("{h}/private/app:1");

    // No credentials: the token server refuses.
    let e = try_pull(&d, &image, None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let e = try_pull(
        &d,
        &image,
        Some(AuthConfig { username: "alice".into(), password: "wrong".into(), ..Default::default() }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");

    // 401 → token (basic auth at the realm) → retry with the bearer token.
    let auth = AuthConfig { username: "alice".into(), password: "s3cr3t-pass".into(), ..Default::default() };
    try_pull(&d, &image, Some(auth)).await.expect("pull with credentials");
    let log = reg.log();
    assert!(log.iter().any(|l| l.starts_with("GET /token") && l.ends_with("auth=Basic")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("/blobs/") && l.ends_with("auth=Bearer")), "{log:?}");

    // The CRI `auth` field (base64 user:pass) works too.
    d.images().remove_image(RemoveImageRequest { image: spec(&image) }).await.unwrap();
    let auth = AuthConfig { auth: "YWxpY2U6czNjcjN0LXBhc3M=".into(), ..Default::default() };
    try_pull(&d, &image, Some(auth)).await.expect("pull with auth field");

    // Identity token: OAuth2 refresh-token grant (POST) at the realm.
    d.images().remove_image(RemoveImageRequest { image: spec(&image) }).await.unwrap();
    let auth = AuthConfig { identity_token: images_support::REFRESH.into(), ..Default::default() };
    try_pull(&d, &image, Some(auth)).await.expect("pull with identity token");
    assert!(reg.log().iter().any(|l| l.starts_with("POST /token")), "{:?}", reg.log());
    // Registry token: sent as the bearer token directly.
    d.images().remove_image(RemoveImageRequest { image: spec(&image) }).await.unwrap();
    let n_token = reg.log().iter().filter(|l| l.contains("/token")).count();
    let auth = AuthConfig { registry_token: images_support::TOKEN.into(), ..Default::default() };
    try_pull(&d, &image, Some(auth)).await.expect("pull with registry token");
    assert_eq!(reg.log().iter().filter(|l| l.contains("/token")).count(), n_token, "no token exchange");

    assert!(!d.log().contains("s3cr3t-pass") && !d.log().contains("YWxpY2U6"), "credentials logged");
    assert!(!d.log().contains(images_support::REFRESH), "identity token logged");
    assert!(!d.log().contains("tok-abc123"), "token logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_mirror_then_working_one() {
    let bad = MiniRegistry::start().await;
    bad.set_broken(true);
    let good = MiniRegistry::start().await;
    good.push_image("team/app", "v1", &[TarBuilder::new().file("app", b"1").build()], &[], None);
    let cfg = format!(
        "[registry.mirrors]\n\"registry.example.invalid\" = [\"http://{}\", \"http://{}\"]\n",
        bad.host(),
        good.host()
    );
    let d = Daemon::start_with_config(&cfg).await;
    let id = try_pull(&d, "registry.example.invalid/team/app:v1", None).await.expect("second mirror works");
    let img = d
        .images()
        .image_status(ImageStatusRequest { image: spec("registry.example.invalid/team/app:v1"), verbose: false })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, vec!["registry.example.invalid/team/app:v1".to_string()], "keeps its name");
    assert_eq!(img.uid.map(|u| u.value), Some(1234));
    assert!(bad.log().iter().any(|l| l.contains("/manifests/v1")), "first mirror tried");

    // All mirrors failing (and no upstream): a clear error, nothing stored.
    good.set_broken(true);
    let before = store_files(&d.root());
    let e = try_pull(&d, "registry.example.invalid/team/other:v1", None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    assert!(e.message().contains("500"), "{e}");
    assert_eq!(store_files(&d.root()), before);
    still_serves(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_pull_leaves_nothing_after_restart() {
    let reg = MiniRegistry::start().await;
    let mut d = Daemon::start().await;
    seeded(&reg, &d).await;
    let before = store_files(&d.root());
    let l1 = TarBuilder::new().file("one", b"1").build();
    let l2 = TarBuilder::new().file("two", &vec![7u8; 200_000]).build();
    reg.push_image("slow/app", "1", &[l1, l2], &[Serve::Normal, Serve::Stall], None);
    let image = format!("{}/slow/app:1", reg.host());
    let mut client = d.images();
    let pull =
        tokio::spawn(
            async move { client.pull_image(PullImageRequest { image: spec(&image), ..Default::default() }).await },
        );
    // Wait until the stalled layer sits in the ingest area and the first layer is unpacked.
    let ingest = d.root().join("content/ingest");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_dir(&ingest).map(|r| r.count()).unwrap_or(0) == 0
        || store_files(&d.root()).len() <= before.len() + 2
    {
        assert!(std::time::Instant::now() < deadline, "pull did not progress:\n{}", d.log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    d.kill();
    let _ = pull.await;
    assert_ne!(store_files(&d.root()), before, "the killed pull had left partial state");
    d.start_again().await;
    assert_eq!(store_files(&d.root()), before, "startup cleaned the interrupted pull");
    let imgs = d.images().list_images(ListImagesRequest::default()).await.unwrap().into_inner().images;
    assert_eq!(imgs.len(), 1, "only the seed image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_and_uncompressed_layers() {
    let reg = MiniRegistry::start().await;
    reg.require_basic("bob", "b0b-pass");
    let d = Daemon::start().await;
    let l1 = TarBuilder::new().dir("data/").file("data/plain", b"uncompressed layer").build();
    let l2 = TarBuilder::new().file("data/second", b"2").build();
    reg.push_image_with("basic/app", "1", &[l1, l2], &[], None, false);
    let image = format!("{}/basic/app:1", reg.host());
    let e = try_pull(&d, &image, None).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    let auth = AuthConfig { username: "bob".into(), password: "b0b-pass".into(), ..Default::default() };
    try_pull(&d, &image, Some(auth)).await.expect("basic auth pull");
    let found = walk_names(&d.root().join("snapshots"));
    assert!(found.iter().any(|n| n.ends_with("data/plain")) && found.iter().any(|n| n.ends_with("data/second")));
    assert!(!d.log().contains("b0b-pass"), "password logged");
}

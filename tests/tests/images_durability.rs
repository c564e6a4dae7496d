//! A pull is durable when PullImage returns: skiffd killed with SIGKILL right after it (no
//! shutdown, nothing flushed by skiffd afterwards) starts again with the image listed, its
//! layers complete, and a container from it runs. (A SIGKILL keeps the page cache; what a power
//! cut would add is covered by the pull's syncfs before the record: see README "Pull
//! performance".)

use std::time::Duration;

use skiff_tests::pods::{container_config, pod_config, NGINX};
use skiff_tests::{cri, Daemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_pull_keeps_a_usable_image() {
    let mut d = Daemon::start().await;
    let image_ref = d.pull(NGINX).await;
    d.kill();
    d.start_again().await;

    let imgs = d.images().list_images(cri::ListImagesRequest::default()).await.unwrap().into_inner().images;
    assert!(imgs.iter().any(|i| i.repo_tags.iter().any(|t| t == NGINX)), "{NGINX} listed after the kill: {imgs:?}");
    assert!(imgs.iter().any(|i| i.repo_digests.contains(&image_ref) || i.id == image_ref), "{image_ref} in {imgs:?}");
    let ingest = d.root().join("content/ingest");
    assert_eq!(std::fs::read_dir(&ingest).map(|r| r.count()).unwrap_or(0), 0, "no download left behind");

    // A container from it runs, reading files of both layers (busybox's shell, the server's page).
    let pc = pod_config(&d, "after-kill");
    let pod = d.run_pod(&pc).await;
    let mut cfg = container_config(
        "reader",
        &["sh", "-c", "grep -q 'Welcome to nginx' /usr/share/nginx/html/index.html && test -x /usr/sbin/nginx"],
    );
    cfg.image = Some(cri::ImageSpec { image: NGINX.into(), ..Default::default() });
    let id = d.create_and_start(&pod, &pc, cfg).await;
    let st = d.wait_exited(&id, Duration::from_secs(20)).await;
    assert_eq!(st.exit_code, 0, "the container read the image's files: {st:?}\n{}", d.log());
    d.remove_pod(&pod).await;
}

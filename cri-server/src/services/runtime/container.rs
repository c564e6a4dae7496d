//! Containers: CreateContainer, StartContainer, StopContainer, RemoveContainer,
//! ContainerStatus, ListContainers, ReopenContainerLog.
//!
//! A container's process runs under its own `skiff-monitor`; skiffd learns about its exit from
//! the exit record the monitor writes (`STATE/containers/<id>/exit.json`), on every read of the
//! container and from a background sweep that also releases the rootfs mount and cgroup of
//! exited containers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use proto::cri::*;
use runtime::monitor::{self, MonitorConfig, MonitorError};
use tokio::sync::Mutex;
use tonic::Status;
use tracing::Instrument;

use super::pod::{labels_match, namespace_options};
use super::RuntimeSvc;
use crate::context::Context;
use crate::error::{from_kind, join_error, StatusExt};
use crate::rollback::Rollback;
use crate::services::image::image_status;
use crate::store::{new_id, now_nanos, ContainerRecord, ContainerState, Lookup, PodRecord, PodState};

/// The kubelet's annotations for the termination message.
const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
const TERMINATION_MESSAGE_POLICY: &str = "io.kubernetes.container.terminationMessagePolicy";
/// Longest termination message kept (the kubelet's limit is 4096 bytes).
const MAX_TERMINATION_MESSAGE: usize = 4096;
/// How long to wait for the exit after SIGKILL before killing the whole cgroup.
const KILL_WAIT: Duration = Duration::from_secs(10);

fn container_state(s: ContainerState) -> proto::cri::ContainerState {
    match s {
        ContainerState::Creating | ContainerState::Created => proto::cri::ContainerState::ContainerCreated,
        ContainerState::Running => proto::cri::ContainerState::ContainerRunning,
        ContainerState::Exited => proto::cri::ContainerState::ContainerExited,
        ContainerState::Unknown => proto::cri::ContainerState::ContainerUnknown,
    }
}

fn monitor_status(e: MonitorError, doing: &str) -> Status {
    match e {
        MonitorError::StartError(m) => Status::unknown(format!("{doing}: {m}")),
        MonitorError::Timeout => Status::deadline_exceeded(format!("{doing}: timed out")),
        other => Status::internal(format!("{doing}: {other}")),
    }
}

/// Parses an image's StopSignal ("SIGQUIT", "QUIT", "3"); SIGTERM when empty or unknown.
pub(crate) fn parse_signal(s: &str) -> i32 {
    let s = s.trim();
    if s.is_empty() {
        return Signal::SIGTERM as i32;
    }
    if let Ok(n) = s.parse::<i32>() {
        return n;
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>().map(|s| s as i32).unwrap_or(Signal::SIGTERM as i32)
}

impl RuntimeSvc {
    pub(crate) fn find_container(&self, id: &str) -> Result<Option<Arc<Mutex<ContainerRecord>>>, Status> {
        match self.ctx.containers.lookup(id) {
            Lookup::Found(c) => Ok(Some(c)),
            Lookup::NotFound => Ok(None),
            Lookup::Ambiguous => Err(Status::invalid_argument(format!("container ID prefix {id:?} is ambiguous"))),
        }
    }

    pub(crate) fn container_or_not_found(&self, id: &str) -> Result<Arc<Mutex<ContainerRecord>>, Status> {
        self.find_container(id)?.ok_or_else(|| Status::not_found(format!("container {id:?} not found")))
    }

    pub(super) async fn create_container_impl(
        &self,
        req: CreateContainerRequest,
    ) -> Result<CreateContainerResponse, Status> {
        let config = req.config.ok_or_else(|| Status::invalid_argument("CreateContainer: config is required"))?;
        let md = config
            .metadata
            .clone()
            .ok_or_else(|| Status::invalid_argument("CreateContainer: config.metadata is required"))?;
        if md.name.is_empty() {
            return Err(Status::invalid_argument("CreateContainer: metadata.name is required"));
        }
        let sc = config.linux.as_ref().and_then(|l| l.security_context.as_ref());
        if let Some(sc) = sc {
            if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
                return Err(Status::invalid_argument(
                    "CreateContainer: run_as_group needs run_as_user or run_as_username",
                ));
            }
        }
        let image = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if image.is_empty() {
            return Err(Status::invalid_argument("CreateContainer: config.image is required"));
        }
        let pod = self.pod_or_not_found(&req.pod_sandbox_id)?;
        let pod = pod.lock().await.clone();
        if pod.state != PodState::Ready {
            return Err(Status::failed_precondition(format!("pod sandbox {} is not ready", pod.id)));
        }
        let pmd = pod.config.metadata.clone().unwrap_or_default();
        let name = format!("{}_{}_{}_{}_{}", md.name, pmd.name, pmd.namespace, pmd.uid, md.attempt);
        let id = new_id();
        if let Err(holder) = self.ctx.containers.reserve(&name, &id) {
            return Err(Status::already_exists(format!("container name {name:?} is reserved by container {holder}")));
        }
        let span = tracing::info_span!("create_container", container_id = %id, pod_id = %pod.id, container = %md.name);
        let result = self.create_container(&id, &name, config, &pod, image).instrument(span).await;
        if result.is_err() {
            self.ctx.containers.release(&name, &id);
        }
        result.map(|()| CreateContainerResponse { container_id: id })
    }

    async fn create_container(
        &self,
        id: &str,
        name: &str,
        config: ContainerConfig,
        pod: &PodRecord,
        image_name: String,
    ) -> Result<(), Status> {
        let ctx = self.ctx.clone();
        let image = ctx
            .images
            .resolve(&image_name)
            .await
            .map_err(|e| image_status("resolve the image", e))?
            .ok_or_else(|| Status::not_found(format!("image {image_name:?} not found: pull it first")))?;
        let image_config = image.config.config().clone();
        let cdir = ctx.container_dir(id);
        let log_path = if !config.log_path.is_empty() && !pod.config.log_directory.is_empty() {
            Path::new(&pod.config.log_directory).join(&config.log_path).display().to_string()
        } else {
            String::new()
        };
        let mut record = ContainerRecord {
            id: id.to_owned(),
            pod_id: pod.id.clone(),
            name: name.to_owned(),
            config: config.clone(),
            image: image_name.clone(),
            image_id: image.id().to_owned(),
            image_ref: image.repo_digest().to_owned(),
            state: ContainerState::Creating,
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: None,
            monitor_pid: None,
            cgroup_path: format!("{}/{id}", pod.cgroup_parent.trim_end_matches('/')),
            log_path,
            stop_signal: parse_signal(
                image_config.as_ref().and_then(|c| c.stop_signal().clone()).as_deref().unwrap_or(""),
            ),
            error: None,
        };

        let mut rb = Rollback::new();
        let result = async {
            ctx.container_store.save(id, &record).status("persist the container")?;
            {
                let (ctx, id) = (ctx.clone(), id.to_owned());
                rb.push_blocking("container record", move || {
                    ctx.container_store.remove(&id).map_err(|e| e.to_string())
                });
            }
            let layout =
                ctx.images.prepare_rootfs(image.id(), id).await.map_err(|e| image_status("prepare the rootfs", e))?;
            {
                let (ctx, id) = (ctx.clone(), id.to_owned());
                rb.push(
                    "rootfs",
                    move || async move { ctx.images.release_rootfs(&id).await.map_err(|e| e.to_string()) },
                );
            }
            std::fs::create_dir_all(cdir.join("rootfs"))
                .map_err(|e| Status::internal(format!("create {}: {e}", cdir.display())))?;
            {
                let cdir = cdir.clone();
                rb.push_blocking("container dir", move || match std::fs::remove_dir_all(&cdir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                    _ => Ok(()),
                });
            }
            crate::failpoint::check("container:after_rootfs")?;

            // The user, looked up in the image's own /etc/passwd and /etc/group.
            let lowerdirs = layout.lowerdirs.clone();
            let cfg2 = config.clone();
            let img2 = image_config.clone();
            let user = tokio::task::spawn_blocking(move || {
                let req = runtime::spec::user_request(&cfg2, img2.as_ref());
                runtime::user::resolve_in_layers(&lowerdirs, &req)
            })
            .await
            .map_err(join_error)?
            .map_err(|e| from_kind(e.kind(), format!("resolve the container user: {e}")))?;

            let pid = self.pid_namespace(&config, pod).await?;
            let paths = ctx.pod_paths(&pod.id);
            let ns = namespace_options(&pod.config);
            let host_ipc = NamespaceMode::try_from(ns.ipc) == Ok(NamespaceMode::Node);
            let input = runtime::spec::SpecInput {
                container_id: id,
                sandbox_id: &pod.id,
                config: &config,
                sandbox: &pod.config,
                image: image_config.as_ref(),
                image_name: &image_name,
                rootfs: &cdir.join("rootfs"),
                pod_files: runtime::spec::PodFilePaths {
                    resolv_conf: Some(paths.resolv_conf()),
                    hosts: Some(paths.hosts()),
                    hostname: Some(paths.hostname()),
                    shm: Some(if host_ipc { PathBuf::from("/dev/shm") } else { paths.shm() }),
                },
                namespaces: runtime::spec::PodNamespacePaths {
                    net: pod.namespaces.net.clone(),
                    ipc: pod.namespaces.ipc.clone(),
                    uts: pod.namespaces.uts.clone(),
                },
                pid,
                cgroups_path: &record.cgroup_path,
                user: &user,
                oom_score_adj_min: ctx.oom_score_adj_min,
                rlimits: Vec::new(),
                cgroup_v2: ctx.cgroups.mode() == runtime::cgroups::CgroupMode::Unified,
            };
            // It reads files (a Localhost seccomp profile, mount sources, devices): not on a worker.
            let spec = tokio::task::block_in_place(|| runtime::spec::generate(&input))
                .map_err(|e| from_kind(e.kind(), format!("container spec: {e}")))?;
            let bytes =
                serde_json::to_vec_pretty(&spec).map_err(|e| Status::internal(format!("encode the OCI spec: {e}")))?;
            runtime::util::write_atomic(&cdir.join("config.json"), &bytes, 0o600)
                .map_err(|e| Status::internal(format!("write config.json: {e}")))?;
            crate::failpoint::check("container:after_spec")?;

            record.state = ContainerState::Created;
            ctx.container_store.save(id, &record).status("persist the container")?;
            Ok::<(), Status>(())
        }
        .await;
        match result {
            Ok(()) => {
                rb.commit();
                tracing::info!(image = %record.image, "container created");
                ctx.events.emit(id, &record.pod_id, ContainerEventType::ContainerCreatedEvent);
                ctx.containers.insert(id, record);
                Ok(())
            }
            Err(status) => {
                let failed = rb.run().await;
                if failed.is_empty() {
                    return Err(status);
                }
                record.state = ContainerState::Unknown;
                record.error = Some(format!("rollback incomplete: {}", failed.join("; ")));
                let _ = ctx.container_store.save(id, &record);
                ctx.containers.insert(id, record);
                Err(Status::internal(format!("{}; and the rollback failed: {}", status.message(), failed.join("; "))))
            }
        }
    }

    /// Where the container's PID namespace comes from.
    async fn pid_namespace(
        &self,
        config: &ContainerConfig,
        pod: &PodRecord,
    ) -> Result<runtime::spec::PidNamespace, Status> {
        use runtime::spec::PidNamespace;
        let opts = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_else(|| namespace_options(&pod.config));
        match NamespaceMode::try_from(opts.pid).unwrap_or(NamespaceMode::Container) {
            NamespaceMode::Node => Ok(PidNamespace::Node),
            NamespaceMode::Container => Ok(PidNamespace::Container),
            NamespaceMode::Pod => match pod.namespaces.infra_pid {
                Some(pid) => Ok(PidNamespace::Pod(PathBuf::from(format!("/proc/{pid}/ns/pid")))),
                None => {
                    Err(Status::failed_precondition(format!("pod sandbox {} has no pod-level PID namespace", pod.id)))
                }
            },
            NamespaceMode::Target => {
                let target = self.container_or_not_found(&opts.target_id)?;
                let target = target.lock().await;
                match (target.state, target.pid) {
                    (ContainerState::Running, Some(pid)) => {
                        Ok(PidNamespace::Target(PathBuf::from(format!("/proc/{pid}/ns/pid"))))
                    }
                    _ => Err(Status::failed_precondition(format!(
                        "target container {} of the PID namespace is not running",
                        opts.target_id
                    ))),
                }
            }
        }
    }

    pub(super) async fn start_container_impl(
        &self,
        req: StartContainerRequest,
    ) -> Result<StartContainerResponse, Status> {
        let entry = self.container_or_not_found(&req.container_id)?;
        let mut c = entry.lock().await;
        let span = tracing::info_span!("start_container", container_id = %c.id, pod_id = %c.pod_id);
        self.start_locked(&mut c).instrument(span).await?;
        Ok(StartContainerResponse {})
    }

    async fn start_locked(&self, c: &mut ContainerRecord) -> Result<(), Status> {
        if c.state != ContainerState::Created {
            return Err(Status::failed_precondition(format!("container {} is {:?}, not created", c.id, c.state)));
        }
        let pod = self.pod_or_not_found(&c.pod_id)?;
        if pod.lock().await.state != PodState::Ready {
            return Err(Status::failed_precondition(format!("pod sandbox {} is not ready", c.pod_id)));
        }
        let ctx = self.ctx.clone();
        let cdir = ctx.container_dir(&c.id);
        let mut rb = Rollback::new();
        let result: Result<monitor::Started, Status> = async {
            // The rootfs: the overlay of the image's snapshots and the container's own layer.
            let layout = ctx
                .images
                .prepare_rootfs(&c.image_id, &c.id)
                .await
                .map_err(|e| image_status("prepare the rootfs", e))?;
            let target = cdir.join("rootfs");
            let t = target.clone();
            tokio::task::spawn_blocking(move || layout.mount(&t))
                .await
                .map_err(join_error)?
                .map_err(|e| image_status("mount the rootfs", e))?;
            rb.push_blocking("rootfs mount", move || {
                imagesvc::RootfsMount::unmount(&target).map_err(|e| e.to_string())
            });
            crate::failpoint::check("start:after_mount")?;

            // The container cgroup, with the resources of the spec.
            let spec_bytes = std::fs::read(cdir.join("config.json"))
                .map_err(|e| Status::internal(format!("read config.json: {e}")))?;
            let spec: oci_spec::runtime::Spec =
                serde_json::from_slice(&spec_bytes).map_err(|e| Status::internal(format!("parse config.json: {e}")))?;
            let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
            let (ctx2, cg) = (ctx.clone(), c.cgroup_path.clone());
            tokio::task::spawn_blocking(move || ctx2.cgroups.create_with(&cg, resources.as_ref()))
                .await
                .map_err(join_error)?
                .status("create the container cgroup")?;
            let (ctx2, cg) = (ctx.clone(), c.cgroup_path.clone());
            rb.push_blocking("container cgroup", move || {
                let _ = ctx2.cgroups.kill_all(&cg);
                ctx2.cgroups.remove(&cg).map_err(|e| e.to_string())
            });
            crate::failpoint::check("start:after_cgroup")?;

            let log_path = (!c.log_path.is_empty()).then(|| PathBuf::from(&c.log_path));
            // The monitor makes the log's directories beneath the pod's log dir, following no symlink.
            let log_dir = crate::validate::log_dir_of(&c.log_path, &c.config.log_path);
            if let Some(dir) = log_path.as_ref().and_then(|p| p.parent()).filter(|_| log_dir.is_none()) {
                std::fs::create_dir_all(dir).map_err(|e| Status::internal(format!("create {}: {e}", dir.display())))?;
            }
            let mut mc = MonitorConfig::new(&cdir, &c.id, log_path);
            mc.log_dir = log_dir;
            mc.tty = c.config.tty;
            mc.stdin = c.config.stdin;
            mc.stdin_once = c.config.stdin_once;
            // A fresh start: no exit record of an earlier life may linger.
            let _ = std::fs::remove_file(&mc.exit_record_path);
            mc.write(&cdir).map_err(|e| Status::internal(format!("write monitor.json: {e}")))?;
            let (bin, dir) = (ctx.monitor_path.clone(), cdir.clone());
            tokio::task::spawn_blocking(move || monitor::spawn(&bin, &dir))
                .await
                .map_err(join_error)?
                .map_err(|e| monitor_status(e, "start the container"))
        }
        .await;
        match result {
            Ok(started) => {
                rb.commit();
                c.state = ContainerState::Running;
                c.pid = Some(started.pid);
                c.monitor_pid = Some(started.monitor_pid);
                c.started_at = now_nanos();
                ctx.container_store.save(&c.id, &*c).status("persist the container")?;
                tracing::info!(pid = started.pid, "container started");
                ctx.events.emit(&c.id, &c.pod_id, ContainerEventType::ContainerStartedEvent);
                Ok(())
            }
            Err(status) => {
                let failed = rb.run().await;
                // The container is done: it never ran. Its status says why.
                c.state = ContainerState::Exited;
                c.exit_code = 128;
                c.reason = "StartError".into();
                c.message = status.message().to_owned();
                c.finished_at = now_nanos();
                c.started_at = c.finished_at;
                if !failed.is_empty() {
                    c.error = Some(format!("cleanup after the failed start incomplete: {}", failed.join("; ")));
                }
                let _ = ctx.container_store.save(&c.id, &*c);
                tracing::info!(error = %status.message(), "container start failed");
                ctx.events.emit(&c.id, &c.pod_id, ContainerEventType::ContainerStoppedEvent);
                Err(status)
            }
        }
    }

    pub(super) async fn stop_container_impl(&self, req: StopContainerRequest) -> Result<StopContainerResponse, Status> {
        // Idempotent: stopping a container that does not exist (any more) is not an error.
        let Some(entry) = self.find_container(&req.container_id)? else {
            return Ok(StopContainerResponse {});
        };
        let id = entry.lock().await.id.clone();
        let span = tracing::info_span!("stop_container", container_id = %id);
        stop_container(&self.ctx, &entry, Duration::from_secs(req.timeout.max(0) as u64)).instrument(span).await?;
        Ok(StopContainerResponse {})
    }

    pub(super) async fn remove_container_impl(
        &self,
        req: RemoveContainerRequest,
    ) -> Result<RemoveContainerResponse, Status> {
        let Some(entry) = self.find_container(&req.container_id)? else {
            return Ok(RemoveContainerResponse {});
        };
        let id = entry.lock().await.id.clone();
        let span = tracing::info_span!("remove_container", container_id = %id);
        remove_container(&self.ctx, &entry).instrument(span).await?;
        Ok(RemoveContainerResponse {})
    }

    /// Stops every container of a pod at once (no grace period), as StopPodSandbox does.
    pub(super) async fn stop_pod_containers(&self, pod_id: &str) -> Result<(), Status> {
        for (_, c) in self.ctx.containers.all() {
            if c.lock().await.pod_id == pod_id {
                stop_container(&self.ctx, &c, Duration::ZERO).await?;
            }
        }
        Ok(())
    }

    /// Removes every container of a pod.
    pub(super) async fn remove_pod_containers(&self, pod_id: &str) -> Result<(), Status> {
        for (_, c) in self.ctx.containers.all() {
            if c.lock().await.pod_id == pod_id {
                remove_container(&self.ctx, &c).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn container_status_impl(
        &self,
        req: ContainerStatusRequest,
    ) -> Result<ContainerStatusResponse, Status> {
        let entry = self.container_or_not_found(&req.container_id)?;
        let mut c = entry.lock().await;
        refresh(&self.ctx, &mut c).await;
        let status = container_status(&c);
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            let spec: Option<serde_json::Value> = std::fs::read(self.ctx.container_dir(&c.id).join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let v = serde_json::json!({
                "pid": c.pid.unwrap_or(0),
                "monitorPid": c.monitor_pid,
                "sandboxID": c.pod_id,
                "cgroupPath": c.cgroup_path,
                "imageID": c.image_id,
                "error": c.error,
                "config": c.config,
                "runtimeSpec": spec,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok(ContainerStatusResponse { status: Some(status), info })
    }

    pub(super) async fn list_containers_impl(
        &self,
        req: ListContainersRequest,
    ) -> Result<ListContainersResponse, Status> {
        let filter = req.filter.unwrap_or_default();
        let mut out = Vec::new();
        for (id, entry) in self.ctx.containers.all() {
            if !filter.id.is_empty() && !id.starts_with(&filter.id) {
                continue;
            }
            let mut c = entry.lock().await;
            if c.state == ContainerState::Creating {
                continue;
            }
            if !filter.pod_sandbox_id.is_empty() && !c.pod_id.starts_with(&filter.pod_sandbox_id) {
                continue;
            }
            refresh(&self.ctx, &mut c).await;
            let state = container_state(c.state);
            if let Some(s) = &filter.state {
                if s.state != state as i32 {
                    continue;
                }
            }
            if !labels_match(&c.config.labels, &filter.label_selector) {
                continue;
            }
            out.push(Container {
                id: c.id.clone(),
                pod_sandbox_id: c.pod_id.clone(),
                metadata: c.config.metadata.clone(),
                image: Some(image_spec(&c)),
                image_ref: c.image_ref.clone(),
                state: state as i32,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: c.image_id.clone(),
            });
        }
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        Ok(ListContainersResponse { containers: out })
    }

    pub(super) async fn reopen_container_log_impl(
        &self,
        req: ReopenContainerLogRequest,
    ) -> Result<ReopenContainerLogResponse, Status> {
        let entry = self.container_or_not_found(&req.container_id)?;
        let mut c = entry.lock().await;
        refresh(&self.ctx, &mut c).await;
        if c.state != ContainerState::Running {
            return Err(Status::failed_precondition(format!("container {} is not running", c.id)));
        }
        let socket = self.ctx.container_dir(&c.id).join(monitor::SOCKET_FILE);
        tokio::task::spawn_blocking(move || monitor::Client::connect(&socket)?.reopen_log())
            .await
            .map_err(join_error)?
            .map_err(|e| monitor_status(e, "reopen the log"))?;
        Ok(ReopenContainerLogResponse {})
    }
}

pub(crate) fn container_status(c: &ContainerRecord) -> proto::cri::ContainerStatus {
    proto::cri::ContainerStatus {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        state: container_state(c.state) as i32,
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: Some(image_spec(c)),
        image_ref: c.image_ref.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: c.config.mounts.clone(),
        log_path: c.log_path.clone(),
        resources: c
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|r| ContainerResources { linux: Some(r), windows: None }),
        image_id: c.image_id.clone(),
        user: None,
    }
}

/// The image as the container's config named it (with its annotations), as containerd reports it.
fn image_spec(c: &ContainerRecord) -> ImageSpec {
    let mut spec = c.config.image.clone().unwrap_or_default();
    spec.image = c.image.clone();
    if spec.user_specified_image.is_empty() {
        spec.user_specified_image = c.image.clone();
    }
    spec
}

/// Brings a RUNNING record up to date with its monitor: the exit record when the process has
/// exited (then the rootfs is unmounted and the cgroup removed), or EXITED with reason Unknown
/// when the monitor died without writing one.
pub(crate) async fn refresh(ctx: &Arc<Context>, c: &mut ContainerRecord) {
    if c.state != ContainerState::Running {
        return;
    }
    let cdir = ctx.container_dir(&c.id);
    let exit = monitor::read_exit_record(&cdir.join(monitor::EXIT_FILE));
    let exit = match exit {
        Some(e) => Some(e),
        None => {
            let alive = c.monitor_pid.map(process_alive).unwrap_or(false);
            if alive {
                return;
            }
            // The monitor may have written the record between the two checks.
            monitor::read_exit_record(&cdir.join(monitor::EXIT_FILE))
        }
    };
    match exit {
        Some(e) => {
            c.exit_code = e.exit_code;
            c.finished_at = e.finished_at;
            c.reason = if e.oom_killed {
                "OOMKilled".into()
            } else if let Some(r) = e.reason.clone().filter(|r| !r.is_empty()) {
                r
            } else if e.exit_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            };
            c.message = e.message.clone().unwrap_or_default();
        }
        None => {
            c.exit_code = 255;
            c.finished_at = now_nanos();
            c.reason = "Unknown".into();
            c.message = "the container's monitor exited without recording the container's exit".into();
        }
    }
    if c.message.is_empty() {
        c.message = termination_message(ctx, c);
    }
    c.state = ContainerState::Exited;
    c.pid = None;
    c.monitor_pid = None;
    release_runtime_resources(ctx, c).await;
    if let Err(e) = ctx.container_store.save(&c.id, &*c) {
        tracing::warn!(container_id = %c.id, error = %e, "cannot persist the container's exit");
    }
    tracing::info!(container_id = %c.id, exit_code = c.exit_code, reason = %c.reason, "container exited");
    ctx.events.emit(&c.id, &c.pod_id, ContainerEventType::ContainerStoppedEvent);
}

/// Whether a process exists (not a zombie of ours: monitors are not our children).
pub(crate) fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // The state is the field after the parenthesised command name.
            let state = s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// The termination message the kubelet asks for through its annotations: the file at
/// `terminationMessagePath` inside the container's own layer, or with the
/// `FallbackToLogsOnError` policy and a failed exit, the tail of the log.
fn termination_message(ctx: &Arc<Context>, c: &ContainerRecord) -> String {
    let annotations = &c.config.annotations;
    let mut message = String::new();
    if let Some(path) = annotations.get(TERMINATION_MESSAGE_PATH).filter(|p| !p.is_empty()) {
        let upper = ctx.config.root.join("containers").join(&c.id).join("upper");
        if let Ok(p) = runtime::mounts::resolve_in_root(&upper, Path::new(path)) {
            // The container made that file: a FIFO or a device node must not hang or flood us.
            if let Ok(bytes) = runtime::util::read_regular_head(&p, MAX_TERMINATION_MESSAGE as u64, true) {
                message = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
    }
    let fallback = annotations.get(TERMINATION_MESSAGE_POLICY).map(String::as_str) == Some("FallbackToLogsOnError");
    if message.is_empty() && fallback && c.exit_code != 0 && !c.log_path.is_empty() {
        if let Ok(mut log) = runtime::util::read_regular_tail(Path::new(&c.log_path), 1 << 20, true) {
            if log.len() >= 1 << 20 {
                // Read from the middle of the file: its first line may be cut.
                log.drain(..log.iter().position(|b| *b == b'\n').map_or(log.len(), |i| i + 1));
            }
            let log = String::from_utf8_lossy(&log);
            let lines: Vec<&str> = log.lines().filter_map(|l| l.splitn(4, ' ').nth(3)).collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            let start = tail.len().saturating_sub(2048);
            let start = (start..tail.len()).find(|&i| tail.is_char_boundary(i)).unwrap_or(tail.len());
            message = tail[start..].to_owned();
        }
    }
    message
}

/// After the exit: unmount the rootfs and remove the container cgroup. Failures are recorded.
pub(crate) async fn release_runtime_resources(ctx: &Arc<Context>, c: &mut ContainerRecord) {
    let ctx2 = ctx.clone();
    let (id, cg) = (c.id.clone(), c.cgroup_path.clone());
    let res = tokio::task::spawn_blocking(move || {
        let mut failed = Vec::new();
        let target = ctx2.container_dir(&id).join("rootfs");
        if let Err(e) = imagesvc::RootfsMount::unmount(&target) {
            failed.push(format!("rootfs: {e}"));
        }
        if ctx2.cgroups.exists(&cg).unwrap_or(false) {
            let _ = ctx2.cgroups.kill_all(&cg);
            if let Err(e) = ctx2.cgroups.remove(&cg) {
                failed.push(format!("cgroup {cg}: {e}"));
            }
        }
        failed
    })
    .await;
    match res {
        Ok(failed) if failed.is_empty() => {}
        Ok(failed) => c.error = Some(failed.join("; ")),
        Err(e) => c.error = Some(e.to_string()),
    }
}

/// Stops a container: its stop signal, then SIGKILL after `timeout` (at once for 0), then the
/// whole cgroup if even that does not end it. Idempotent.
pub(crate) async fn stop_container(
    ctx: &Arc<Context>,
    entry: &Arc<Mutex<ContainerRecord>>,
    timeout: Duration,
) -> Result<(), Status> {
    let (socket, signal, cgroup) = {
        let mut c = entry.lock().await;
        refresh(ctx, &mut c).await;
        // Never started, or already exited: nothing to stop (containerd leaves a created
        // container CREATED too).
        if c.state != ContainerState::Running {
            return Ok(());
        }
        (ctx.container_dir(&c.id).join(monitor::SOCKET_FILE), c.stop_signal, c.cgroup_path.clone())
    };
    // The record is not locked while we wait, so that status calls keep answering.
    let ctx2 = ctx.clone();
    let res = tokio::task::spawn_blocking(move || -> Result<(), MonitorError> {
        let mut client = match monitor::Client::connect(&socket) {
            Ok(c) => c,
            Err(MonitorError::MonitorGone) => return Ok(()),
            Err(e) => return Err(e),
        };
        let kill = Signal::SIGKILL as i32;
        if !timeout.is_zero() && signal != kill {
            client.signal(signal)?;
            match client.wait_exit(Some(timeout)) {
                Ok(_) | Err(MonitorError::MonitorGone) => return Ok(()),
                Err(MonitorError::Timeout) => {}
                Err(e) => return Err(e),
            }
        }
        match client.signal(kill) {
            Ok(()) => {}
            Err(MonitorError::MonitorGone) => return Ok(()),
            Err(e) => return Err(e),
        }
        // Every other process of the container too (containerd's `kill --all`): in a shared
        // (pod or node) PID namespace they outlive the main process and hold its output open,
        // so the exit would be recorded only after the monitor's drain grace.
        let _ = ctx2.cgroups.kill_all(&cgroup);
        match client.wait_exit(Some(KILL_WAIT)) {
            Ok(_) | Err(MonitorError::MonitorGone) => Ok(()),
            Err(MonitorError::Timeout) => {
                // Something holds on (a process stuck in the kernel?): kill the whole cgroup.
                let _ = ctx2.cgroups.kill_all(&cgroup);
                match client.wait_exit(Some(KILL_WAIT)) {
                    Ok(_) | Err(MonitorError::MonitorGone) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    })
    .await
    .map_err(join_error)?;
    res.map_err(|e| monitor_status(e, "stop the container"))?;
    let mut c = entry.lock().await;
    // The monitor writes the record before it exits; give it a moment if it is still at it.
    for _ in 0..50 {
        refresh(ctx, &mut c).await;
        if c.state != ContainerState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(exit_code = c.exit_code, "container stopped");
    Ok(())
}

/// Removes a container: kills it if it runs, unmounts, removes its cgroup, writable layer,
/// state dir and record. Idempotent.
pub(crate) async fn remove_container(ctx: &Arc<Context>, entry: &Arc<Mutex<ContainerRecord>>) -> Result<(), Status> {
    stop_container(ctx, entry, Duration::ZERO).await?;
    let mut c = entry.lock().await;
    if ctx.containers.lookup(&c.id).is_not_found() {
        return Ok(());
    }
    release_runtime_resources(ctx, &mut c).await;
    let mut failed: Vec<String> = c.error.take().into_iter().collect();
    if let Err(e) = ctx.images.release_rootfs(&c.id).await {
        failed.push(format!("writable layer: {e}"));
    }
    let cdir = ctx.container_dir(&c.id);
    if let Err(e) = std::fs::remove_dir_all(&cdir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            failed.push(format!("{}: {e}", cdir.display()));
        }
    }
    if !failed.is_empty() {
        c.error = Some(format!("removal incomplete: {}", failed.join("; ")));
        let _ = ctx.container_store.save(&c.id, &*c);
        return Err(Status::internal(format!("cannot remove container {}: {}", c.id, failed.join("; "))));
    }
    ctx.container_store.remove(&c.id).status("delete the container record")?;
    ctx.containers.remove(&c.id);
    ctx.containers.release(&c.name, &c.id);
    tracing::info!(container_id = %c.id, "container removed");
    ctx.events.emit(&c.id, &c.pod_id, ContainerEventType::ContainerDeletedEvent);
    Ok(())
}

/// Every second: notice exits of running containers (and release their mounts and cgroups)
/// even when nobody asks about them.
pub(crate) fn spawn_exit_sweeper(ctx: Arc<Context>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (_, entry) in ctx.containers.all() {
                if let Ok(mut c) = entry.try_lock() {
                    refresh(&ctx, &mut c).await;
                }
            }
        }
    });
}

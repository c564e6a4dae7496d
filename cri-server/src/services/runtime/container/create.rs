//! CreateContainer: image → writable layer → user → OCI spec → CREATED.

use std::path::{Path, PathBuf};

use proto::cri::*;
use tonic::Status;
use tracing::Instrument;

use super::detached;
use crate::error::{from_kind, join_error, StatusExt};
use crate::rollback::Rollback;
use crate::services::image::image_status;
use crate::services::runtime::events;
use crate::services::runtime::pod::namespace_options;
use crate::services::runtime::RuntimeSvc;
use crate::store::reserve::NameGuard;
use crate::store::{now_nanos, ContainerRecord, ContainerState, Mode, PodRecord, PodState, Transition};

impl RuntimeSvc {
    pub(in crate::services::runtime) async fn create_container_impl(
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
        if !crate::spec::signal::valid_cri(config.stop_signal) {
            return Err(Status::invalid_argument(format!(
                "CreateContainer: config.stop_signal {} is not a signal this node knows",
                config.stop_signal
            )));
        }
        let pod_entry = self.pod_or_not_found(&req.pod_sandbox_id)?;
        let pod = pod_entry.get();
        let pmd = pod.config.metadata.clone().unwrap_or_default();
        let name = format!("{}_{}_{}_{}_{}", md.name, pmd.name, pmd.namespace, pmd.uid, md.attempt);
        // Each attempt runs in a task of its own; a retry with the same metadata joins it or
        // gets its result (see store::reserve).
        let attempt = |id: String, guard: NameGuard| {
            let (svc, pod_entry, config, image, name) =
                (self.handle(), pod_entry.clone(), config.clone(), image.clone(), name.clone());
            let container = md.name.clone();
            detached(async move {
                let pod_id = pod_entry.get().id;
                let span = tracing::info_span!("create_container", container_id = %id, %pod_id, %container);
                async {
                    let _p = pod_entry
                        .begin(Transition::InUse, Mode::Shared)
                        .await
                        .map_err(|_| Status::not_found(format!("pod sandbox {pod_id:?} not found")))?;
                    let pod = pod_entry.get();
                    if pod.state != PodState::Ready {
                        return Err(Status::failed_precondition(format!("pod sandbox {} is not ready", pod.id)));
                    }
                    svc.create_container(&id, &name, config, &pod, image).await?;
                    guard.commit();
                    Ok(())
                }
                .instrument(span)
                .await
            })
        };
        let taken =
            |holder: &str| Status::already_exists(format!("container name {name:?} is reserved by container {holder}"));
        let id = self.ctx.containers.names.create_once(&name, attempt, taken).await?;
        Ok(CreateContainerResponse { container_id: id })
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
            stop_signal: crate::spec::signal::stop_signal(
                config.stop_signal,
                image_config.as_ref().and_then(|c| c.stop_signal().clone()).as_deref().unwrap_or(""),
            ),
            error: None,
            user: None,
            cleaned_up: false,
            starting: false,
        };

        let mut rb = Rollback::new();
        let result = async {
            // The undo steps are pushed before their steps run (each is a no-op for what does
            // not exist), so that what a failed step made half is undone too.
            {
                let (ctx, id) = (ctx.clone(), id.to_owned());
                rb.push(
                    "rootfs",
                    move || async move { ctx.images.release_rootfs(&id).await.map_err(|e| e.to_string()) },
                );
            }
            {
                let cdir = cdir.clone();
                rb.push_blocking("container dir", move || match std::fs::remove_dir_all(&cdir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                    _ => Ok(()),
                });
            }
            // The CREATED record is written (durably) while the files are made: a failure of
            // the files deletes it again (durably), and what a crash of skiffd leaves before
            // the answer (a CREATED record whose state dir has no config.json yet) is rolled
            // back by the next start's recovery, as is a hold or state dir of no record.
            let recorded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            {
                let (store, id, recorded) = (ctx.container_store.clone(), id.to_owned(), recorded.clone());
                rb.push_blocking("record", move || {
                    if !recorded.load(std::sync::atomic::Ordering::SeqCst) {
                        return Ok(());
                    }
                    store.remove(&id).map_err(|e| e.to_string())
                });
            }
            let pid = self.pid_namespace(&config, pod).await?;
            let paths = ctx.pod_paths(&pod.id);
            let ns = namespace_options(&pod.config);
            let host_ipc = NamespaceMode::try_from(ns.ipc) == Ok(NamespaceMode::Node);
            // The writable layer: its hold counted at once, its check, directories and
            // journal entry on the two threads below. With image volumes (their images must
            // be pulled; their snapshots are held with the rootfs) the layer is prepared
            // here in full first, as the volumes' holds extend its hold.
            let (prep, image_volumes) = if config.mounts.iter().any(crate::spec::mounts::is_image_volume) {
                ctx.images.prepare_rootfs(image.id(), id).await.map_err(|e| image_status("prepare the rootfs", e))?;
                (None, image_volumes(&ctx, id, &config, &mut record).await?)
            } else {
                let prep =
                    ctx.images.begin_rootfs(image.id(), id).await.map_err(|e| image_status("prepare the rootfs", e))?;
                (prep, Vec::new())
            };
            // At once, on two threads of the blocking pool. The record: the image's snapshots
            // checked, the layer's directory made and its hold journaled, the state dir made,
            // the user looked up (in the image's own /etc/passwd and /etc/group, read once per
            // layer stack), then the CREATED record, durable (one `fdatasync`, which makes the
            // hold's entry durable too). The files: the layer's upper and work dirs, the OCI
            // spec (it reads files: a Localhost seccomp profile, mount sources, devices) and
            // config.json (in the volatile state dir: replaced, not fsynced).
            let durable = {
                let (store, prep, cdir, id) = (ctx.container_store.clone(), prep.clone(), cdir.clone(), id.to_owned());
                let (user_files, layers, recorded) =
                    (ctx.user_files.clone(), ctx.images.layer_dirs(&image), recorded.clone());
                let (mut rec, image_config) = (record.clone(), image_config.clone());
                tokio::task::spawn_blocking(move || -> Result<ContainerRecord, Status> {
                    if let Some(p) = &prep {
                        p.hold().map_err(|e| image_status("prepare the rootfs", e))?;
                    }
                    std::fs::create_dir_all(&cdir)
                        .map_err(|e| Status::internal(format!("create {}: {e}", cdir.display())))?;
                    let user = user_files
                        .resolve(&layers, &crate::spec::user_request(&rec.config, image_config.as_ref()))
                        .map_err(|e| from_kind(e.kind(), format!("resolve the container user: {e}")))?;
                    rec.user = Some(crate::store::ContainerUserIds {
                        uid: user.uid,
                        gid: user.gid,
                        supplemental_groups: user.additional_gids,
                    });
                    rec.state = ContainerState::Created;
                    recorded.store(true, std::sync::atomic::Ordering::SeqCst);
                    store.save(&id, &rec).status("persist the container")?;
                    Ok(rec)
                })
            };
            let owned = SpecParts {
                container_id: id.to_owned(),
                config: config.clone(),
                sandbox: pod.clone(),
                image: image_config.clone(),
                image_name: image_name.clone(),
                rootfs: cdir.join("rootfs"),
                pod_files: paths.files(host_ipc),
                pid,
                cgroups_path: record.cgroup_path.clone(),
                oom_score_adj_min: ctx.oom_score_adj_min,
                rlimits: ctx.config.runtime.rlimits(),
                cgroup_v2: ctx.cgroups.mode() == runtime::cgroups::CgroupMode::Unified,
                layers: ctx.images.layer_dirs(&image),
                user_files: ctx.user_files.clone(),
            };
            let files = {
                let spec_path = cdir.join("config.json");
                tokio::task::spawn_blocking(move || -> Result<(), Status> {
                    if let Some(p) = &prep {
                        p.dirs().map_err(|e| image_status("prepare the rootfs", e))?;
                    }
                    crate::failpoint::hit_blocking("container:after_rootfs")?;
                    let mut spec = owned.state_dir_and_spec()?;
                    crate::spec::mounts::with_image_volumes(&mut spec, &image_volumes)
                        .map_err(|e| from_kind(e.kind(), format!("container spec: {e}")))?;
                    let bytes = serde_json::to_vec_pretty(&spec)
                        .map_err(|e| Status::internal(format!("encode the OCI spec: {e}")))?;
                    runtime::util::write_replace(&spec_path, &bytes, 0o600)
                        .map_err(|e| Status::internal(format!("write config.json: {e}")))?;
                    crate::failpoint::hit_blocking("container:after_spec")
                })
            };
            let (durable, files) = tokio::join!(durable, files);
            let (durable, files) = (durable.map_err(join_error)?, files.map_err(join_error)?);
            // What failed before the record first (the layer's check: the user's lookup reads
            // the image's layers), then the files, then the record's write.
            let was_recorded = recorded.load(std::sync::atomic::Ordering::SeqCst);
            record = match (durable, files) {
                (Err(e), _) if !was_recorded => return Err(e),
                (_, Err(e)) | (Err(e), Ok(())) => return Err(e),
                (Ok(rec), Ok(())) => rec,
            };
            Ok::<(), Status>(())
        }
        .await;
        match result {
            Ok(()) => {
                rb.commit();
                tracing::info!(image = %record.image, "container created");
                let pod_id = record.pod_id.clone();
                ctx.containers.insert(id, record);
                events::emit(&ctx, id, &pod_id, ContainerEventType::ContainerCreatedEvent);
                Ok(())
            }
            Err(status) => {
                let failed = rb.run().await;
                if failed.is_empty() {
                    return Err(status);
                }
                record.state = ContainerState::Unknown;
                record.error = Some(format!("rollback incomplete: {}", failed.join("; ")));
                let _ = ctx.container_store.save_async(id, &record).await;
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
    ) -> Result<crate::spec::PidNamespace, Status> {
        use crate::spec::PidNamespace;
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
                let target = self.container_or_not_found(&opts.target_id)?.get();
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
}

/// Resolves and holds the container's image volumes (CRI `Mount.image`); records each one's
/// image ID as `image.image_ref` of its mount, which ContainerStatus reports.
async fn image_volumes(
    ctx: &crate::context::Context,
    id: &str,
    config: &ContainerConfig,
    record: &mut ContainerRecord,
) -> Result<Vec<crate::spec::mounts::ImageVolumeMount>, Status> {
    let wanted: Vec<(usize, String)> = config
        .mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| crate::spec::mounts::is_image_volume(m))
        .filter_map(|(i, m)| m.image.as_ref().map(|im| (i, im.image.trim().to_string())))
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = wanted.iter().map(|(_, n)| n.clone()).collect();
    let held = ctx.images.hold_image_volumes(id, &names).await.map_err(|e| image_status("image volume", e))?;
    let mut out = Vec::new();
    for ((i, _), v) in wanted.into_iter().zip(held) {
        let m = &config.mounts[i];
        if let Some(im) = record.config.mounts.get_mut(i).and_then(|m| m.image.as_mut()) {
            im.image_ref = v.image_id.to_string();
        }
        out.push(crate::spec::mounts::ImageVolumeMount {
            container_path: m.container_path.clone(),
            layers: v.layers,
            sub_path: m.image_sub_path.clone(),
        });
    }
    Ok(out)
}

/// What the state dir, the user's lookup and the spec need, owned (for the blocking pool).
struct SpecParts {
    container_id: String,
    config: ContainerConfig,
    sandbox: PodRecord,
    image: Option<oci_spec::image::Config>,
    image_name: String,
    rootfs: PathBuf,
    pod_files: crate::spec::PodFilePaths,
    pid: crate::spec::PidNamespace,
    cgroups_path: String,
    oom_score_adj_min: i32,
    rlimits: Vec<oci_spec::runtime::PosixRlimit>,
    cgroup_v2: bool,
    /// The image's layers, topmost first.
    layers: Vec<PathBuf>,
    user_files: std::sync::Arc<runtime::user::LayerUserFiles>,
}

impl SpecParts {
    /// Blocking: makes `STATE/containers/<id>/rootfs`, resolves the user (as the record's
    /// thread does: the files are read once per layer stack) and generates the spec (without
    /// the image volumes).
    fn state_dir_and_spec(self) -> Result<oci_spec::runtime::Spec, Status> {
        std::fs::create_dir_all(&self.rootfs)
            .map_err(|e| Status::internal(format!("create {}: {e}", self.rootfs.display())))?;
        let req = crate::spec::user_request(&self.config, self.image.as_ref());
        let user = self
            .user_files
            .resolve(&self.layers, &req)
            .map_err(|e| from_kind(e.kind(), format!("resolve the container user: {e}")))?;
        let pod = &self.sandbox;
        let input = crate::spec::SpecInput {
            container_id: &self.container_id,
            sandbox_id: &pod.id,
            config: &self.config,
            sandbox: &pod.config,
            image: self.image.as_ref(),
            image_name: &self.image_name,
            rootfs: &self.rootfs,
            pod_files: self.pod_files,
            namespaces: crate::spec::PodNamespacePaths {
                net: pod.namespaces.net.clone(),
                ipc: pod.namespaces.ipc.clone(),
                uts: pod.namespaces.uts.clone(),
                user: pod.namespaces.user.clone(),
            },
            pid: self.pid,
            cgroups_path: &self.cgroups_path,
            user: &user,
            oom_score_adj_min: self.oom_score_adj_min,
            rlimits: self.rlimits,
            cgroup_v2: self.cgroup_v2,
        };
        crate::spec::generate(&input).map_err(|e| from_kind(e.kind(), format!("container spec: {e}")))
    }
}

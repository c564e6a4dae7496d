//! The per-container monitor (`skiff-monitor`) and skiffd's blocking client for it.
//!
//! One small, single-threaded, no-async process per container. Binary modes:
//!
//! * `skiff-monitor run <container-dir>`: reads `config.json` (OCI runtime spec) and
//!   `monitor.json` ([`MonitorConfig`]), detaches from its spawner (fork + setsid, the
//!   intermediate process exits so the monitor is reparented away from skiffd), creates the
//!   container process as a mini OCI runtime (namespaces, cgroup join, rootfs + pivot_root,
//!   masked/readonly paths, sysctls, rlimits, oom_score_adj, user, capabilities,
//!   no_new_privs, seccomp, exec), reports `started{pid}` or a start error on its stdout
//!   (read by [`spawn`]), then copies the container's stdout/stderr into the CRI log file,
//!   serves `monitor.sock`, waits for the exit, detects an OOM kill, writes `exit.json`
//!   atomically, notifies waiting clients and exits, removing its socket and pid file.
//!   With `--gated` ([`spawn_gated`]) stdin is a gate: everything that needs neither the rootfs
//!   nor the cgroup is done first (configuration, spec, socket, pid file, log, and the
//!   container process forked and waiting in the pod's net, ipc and uts namespaces), then the
//!   monitor waits for the gate's `g`, lets the process go on (cgroup join, mounts, exec) and
//!   reports; a `c` before it ([`Gate::cgroup_ready`]: the cgroup is made) is passed on to the
//!   waiting process, which joins the cgroup at once; the gate's end without a `g` calls the
//!   start off (the process exits, leaving the cgroup).
//!   The container process has `PR_SET_PDEATHSIG(SIGKILL)` towards its monitor: if the monitor
//!   is killed, so is the container (nothing would log it or record its exit otherwise). CRI
//!   `stdin` gives it a pipe the monitor holds open; CRI `tty` a terminal allocated in the
//!   container's own devpts (master passed back over SCM_RIGHTS), logged as `stdout`.
//! * `skiff-monitor exec <container-dir> [--tty [--size CxR]] [--stdin] -- cmd args…`: used
//!   by [`exec_sync`] and [`exec_stream`]; fd 0 is a socket pair with the client (reports one
//!   way, `Resize`/`Kill` and the stdin pipe the other), fds 1/2 the client's pipes. With
//!   `--tty` the terminal is allocated in the container's devpts and relayed by the helper.
//!   The client closing the socket kills the command's tree. See [`stream`].
//! * `skiff-monitor infra <pod-dir> [--cgroup <cgroup>]`: PID 1 of a pod-level PID namespace
//!   ([`spawn_infra`]), in the pod cgroup.
//! * `skiff-monitor zygote <containers-dir> <room>`: the monitors' zygote ([`spawn_zygote`],
//!   [`Zygote::spawn_gated`]): exec'd once, it forks a `run <dir> --gated` monitor per request
//!   received on its stdin (a `SOCK_SEQPACKET` socket: the directory, with the gate's and the
//!   report's fds), without the detaching fork, its command line rewritten to that of a
//!   spawned monitor; it exits at the end of its stdin.
//!
//! ## Client API (blocking; call from `spawn_blocking`)
//! * [`MonitorConfig::new`] + [`MonitorConfig::write`]: `monitor.json` in the container dir.
//! * [`spawn`]`(monitor_bin, container_dir) -> Result<Started{pid, monitor_pid}, MonitorError>`;
//!   a container that cannot start gives `MonitorError::StartError(message)` and an exit
//!   record with reason `StartError`.
//! * [`Client::connect`]`(socket)`, then [`Client::status`], [`Client::signal`],
//!   [`Client::reopen_log`], [`Client::wait_exit`]`(timeout)`. `MonitorError::MonitorGone`
//!   means the monitor has exited: read the record with [`read_exit_record`].
//! * [`exec_sync`]`(monitor_bin, container_dir, cmd, timeout, max_output)`;
//!   `MonitorError::Timeout` after killing the command's process group.
//! * [`spawn_infra`]`(monitor_bin, pod_dir, cgroup) -> InfraStarted{pid}`; stop it with SIGTERM.
//! * [`exec_stream`]`(monitor_bin, container_dir, cmd, &ExecStreamOptions{tty, stdin, stdout,
//!   stderr, size}) -> ExecSession` (`take_stdin/take_stdout/take_stderr`, `resize`, `kill`,
//!   `wait`, `handle() -> ExecHandle` for resize/kill from other threads).
//! * [`attach`]`(container_dir_or_socket, &AttachOptions{stdin, stdout, stderr}) ->
//!   AttachSession` (`tty`, `take_*`, `resize`).
//!
//! ## Streams
//! EOF, exit, kill and slow readers of exec and attach sessions are described in the docs of
//! the [`stream`] module; in short, exec's fds are
//! the command's own pipes (or the relayed terminal), dropping an unfinished [`ExecSession`]
//! kills the command's tree, [`ExecSession::wait`] gives the exit code; attachers get the
//! live output on pipes the monitor writes without ever blocking (a full pipe drops that
//! attacher's output), detaching (drop) never stops the container, and the container's exit
//! is EOF on their stdout/stderr.
//!
//! ## config.json support
//! Namespaces (new: pid, mount, ipc, uts, net, cgroup; joined by path: pid, ipc, uts, net,
//! cgroup; user/time and joining a mount namespace are refused), `linux.cgroupsPath`
//! (cgroupfs form, joined with [`crate::cgroups::join_self`]), `root.path`/`root.readonly`,
//! `linux.rootfsPropagation`, mounts in order (bind/rbind with ro/nosuid/nodev/noexec/… and
//! propagation, proc, sysfs, tmpfs, devpts, mqueue, cgroup: v1 = tmpfs + read-only binds of
//! the container's own cgroup per hierarchy, v2 = cgroup2), `linux.devices` plus the standard
//! /dev nodes and links when /dev is a tmpfs, `maskedPaths`, `readonlyPaths`, `hostname`
//! (only in a new UTS namespace), `linux.sysctl`, `process.{args,env,cwd (created if
//! missing, as runc), user (uid, gid, additionalGids, umask), capabilities (all five sets),
//! noNewPrivileges, rlimits, oomScoreAdj (clamped to the monitor's own value when lower and
//! CAP_SYS_RESOURCE is missing; logged to monitor.log)}`, `linux.seccomp` (libseccomp).
//! Ignored: hooks, apparmor/selinux labels, `linux.resources` (skiffd applies them to the
//! cgroup), `process.terminal` (the CRI tty flag in `monitor.json` decides).
//!
//! ## PID 1 and zombies
//! critest's "runtime should support ContainerPID" requires `/proc/1/cmdline` of a container
//! with its own PID namespace to be the user's process (nginx's master), so the user process
//! is exec'd as PID 1 of its namespace, like runc does; no init stub. Orphans are reaped by:
//! * exec sessions: every exec'd command runs below a tiny in-namespace stub that is a child
//!   subreaper (`PR_SET_CHILD_SUBREAPER`) and reaps everything the command leaves behind
//!   (the usual source of zombies: probes like `sh -c 'cmd &'`);
//! * pod-level PID namespaces: the `infra` process is PID 1 and reaps forever;
//! * host PID namespace: the monitor itself is a child subreaper and reaps orphans;
//! * a container's own PID namespace: its PID 1 is the user's process (OCI semantics); when
//!   it exits the kernel kills and reaps the rest of the namespace.
//!
//! ## Protocol
//! `monitor.sock` carries frames of a 4-byte big-endian length followed by a JSON object with
//! a version field `v` (see [`protocol`]). Requests: status, signal, reopen_log, wait,
//! attach (answered by `attached` carrying pipe fds with SCM_RIGHTS; the connection stays the
//! attacher's), resize (the container's terminal); an `exited` response is pushed to clients
//! that sent `wait` when the container exits. Still version 1: the new requests and answers
//! only add variants, and old frames decode as before.

mod client;
pub mod protocol;
#[doc(hidden)]
pub mod server;
pub mod stream;
mod types;

pub use client::{exec_sync, read_exit_record, spawn, spawn_gated, spawn_infra, spawn_zygote, Client, Gate, Zygote};
pub use stream::{attach, exec_stream, AttachOptions, AttachSession, ExecHandle, ExecSession, ExecStreamOptions};
pub use types::*;

//! The `process` section: args (kubelet/docker rules), env, cwd, user, capabilities,
//! no_new_privs, oom_score_adj, rlimits.

use oci_spec::runtime::{LinuxCapabilitiesBuilder, Process, UserBuilder};
use proto::cri;

use super::{clamp_oom_score_adj, SpecError, SpecInput};
use runtime::caps;

/// Default PATH when the image sets none (as containerd/docker).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Merges CRI command/args with the image entrypoint/cmd (docker's rules, as containerd):
/// a CRI command replaces the entrypoint and drops the image cmd; CRI args replace the cmd.
pub fn merge_args(
    command: &[String],
    args: &[String],
    entrypoint: &[String],
    cmd: &[String],
) -> Result<Vec<String>, SpecError> {
    let mut c: Vec<String> = command.to_vec();
    let mut a: Vec<String> = args.to_vec();
    if c.is_empty() {
        if a.is_empty() {
            a = cmd.to_vec();
        }
        if !(entrypoint.len() == 1 && entrypoint[0].is_empty()) {
            c = entrypoint.to_vec();
        }
    }
    c.extend(a);
    if c.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(c)
}

/// Adds `KEY=value` replacing an earlier entry of the same key in place.
fn put_env(env: &mut Vec<String>, kv: String) {
    let key = kv.split_once('=').map(|(k, _)| k).unwrap_or(&kv).to_string();
    if let Some(pos) = env.iter().position(|e| e.split_once('=').map(|(k, _)| k).unwrap_or(e) == key) {
        env[pos] = kv;
    } else {
        env.push(kv);
    }
}

pub(super) fn build(
    input: &SpecInput<'_>,
    sc: &cri::LinuxContainerSecurityContext,
    hostname: &str,
) -> Result<(Process, Vec<String>), SpecError> {
    let config = input.config;
    let img = input.image;
    let empty: Vec<String> = Vec::new();
    let entrypoint = img.and_then(|i| i.entrypoint().as_ref()).unwrap_or(&empty);
    let cmd = img.and_then(|i| i.cmd().as_ref()).unwrap_or(&empty);
    let args = merge_args(&config.command, &config.args, entrypoint, cmd)?;

    let mut env: Vec<String> = Vec::new();
    env.push(format!("PATH={DEFAULT_PATH}"));
    put_env(&mut env, format!("HOSTNAME={hostname}"));
    for e in img.and_then(|i| i.env().as_ref()).unwrap_or(&empty) {
        put_env(&mut env, e.clone());
    }
    for kv in &config.envs {
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(SpecError::invalid(format!("environment variable {:?}", kv.key), "empty or contains '='"));
        }
        put_env(&mut env, format!("{}={}", kv.key, kv.value));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", input.user.home));
    }

    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else {
        img.and_then(|i| i.working_dir().clone()).filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into())
    };
    if !cwd.starts_with('/') {
        return Err(SpecError::invalid("working directory", format!("{cwd:?} is not absolute")));
    }

    let user = UserBuilder::default()
        .uid(input.user.uid)
        .gid(input.user.gid)
        .additional_gids(input.user.additional_gids.clone())
        .build()?;

    let (add, drop, ambient) = match &sc.capabilities {
        Some(c) => (c.add_capabilities.clone(), c.drop_capabilities.clone(), c.add_ambient_capabilities.clone()),
        None => (vec![], vec![], vec![]),
    };
    let set = caps::compute(sc.privileged, &add, &drop)?;
    let mut ambient_set = oci_spec::runtime::Capabilities::new();
    for a in &ambient {
        let c = caps::parse(a)?;
        if set.contains(&c) {
            ambient_set.insert(c);
        }
    }
    // The builder's defaults fill every set (inheritable and ambient included) with the
    // default caps: set each one explicitly. Inheritable/ambient stay empty unless ambient caps
    // are asked for (CVE-2022-24769).
    let mut capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set.clone())
        .build()?;
    if ambient_set.is_empty() {
        capabilities.set_inheritable(None);
        capabilities.set_ambient(None);
    } else {
        capabilities.set_inheritable(Some(ambient_set.clone()));
        capabilities.set_ambient(Some(ambient_set));
    }

    let want_oom = config.linux.as_ref().and_then(|l| l.resources.as_ref()).map(|r| r.oom_score_adj).unwrap_or(0);
    let oom = clamp_oom_score_adj(want_oom, input.oom_score_adj_min)?;

    let mut p = Process::default();
    p.set_terminal(Some(config.tty));
    p.set_user(user);
    p.set_args(Some(args));
    p.set_env(Some(env));
    p.set_cwd(cwd.into());
    p.set_capabilities(Some(capabilities));
    p.set_no_new_privileges(if sc.no_new_privs { Some(true) } else { None });
    p.set_oom_score_adj(Some(oom));
    p.set_rlimits(if input.rlimits.is_empty() { None } else { Some(input.rlimits.clone()) });
    p.set_apparmor_profile(None);
    p.set_selinux_label(None);
    Ok((p, caps::names(&set)))
}

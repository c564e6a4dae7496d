//! The `skiff-monitor` binary's side. Single-threaded, no async runtime: it forks freely.
//! Not a stable API; only `src/bin/skiff-monitor.rs` calls [`main`].

mod container;
mod exec;
mod infra;
mod log;
mod rootfs;
mod run;
mod security;
mod util;

pub use log::format_timestamp;
pub use log::LineSplitter;

const USAGE: &str = "usage: skiff-monitor run <container-dir> [--gated]\n       skiff-monitor zygote <containers-dir> <room>\n       skiff-monitor exec <container-dir> [--tty] -- cmd [args…]\n       skiff-monitor infra <pod-dir> [--cgroup <cgroup> [--hierarchies <json>]]";

/// Entry point of the binary; returns the process exit code.
pub fn main(args: Vec<String>) -> i32 {
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    match (mode, args.get(2)) {
        ("run", Some(dir)) => match &args[3..] {
            [] => run::main(std::path::Path::new(dir), false),
            [flag] if flag == "--gated" => run::main(std::path::Path::new(dir), true),
            _ => {
                eprintln!("{USAGE}");
                2
            }
        },
        ("zygote", Some(containers)) => run::zygote(std::path::Path::new(containers)),
        ("exec", Some(dir)) => exec::main(std::path::Path::new(dir), &args[3..]),
        ("infra", Some(dir)) => match &args[3..] {
            [] => infra::main(std::path::Path::new(dir), None),
            [flag, cg] if flag == "--cgroup" => infra::main(std::path::Path::new(dir), Some(cg)),
            [flag, cg, hflag, h] if flag == "--cgroup" && hflag == "--hierarchies" => {
                match serde_json::from_str(h) {
                    Ok(h) => util::use_hierarchies(Some(&h)),
                    Err(e) => {
                        eprintln!("--hierarchies: {e}");
                        return 2;
                    }
                }
                infra::main(std::path::Path::new(dir), Some(cg))
            }
            _ => {
                eprintln!("{USAGE}");
                2
            }
        },
        _ => {
            eprintln!("{USAGE}");
            2
        }
    }
}

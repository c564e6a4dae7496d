//! skiffd: the skiff CRI daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cri_server::config::{Config, LogFormat, Overrides, DEFAULT_CONFIG_TOML};

#[derive(Parser, Debug)]
#[command(name = "skiffd", version, about = "skiff: a Kubernetes CRI container runtime")]
struct Cli {
    /// Configuration file (default /etc/skiff/config.toml; a missing default file = built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Persistent data directory (default /var/lib/skiff).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Volatile state directory (default /run/skiff).
    #[arg(long)]
    state: Option<PathBuf>,
    /// The CRI unix socket (default <state>/skiff.sock).
    #[arg(long)]
    listen: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or a tracing filter.
    #[arg(long)]
    log_level: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Append the log to this file instead of stderr (reopened on SIGHUP).
    #[arg(long)]
    log_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Check that this machine has what skiff needs.
    Check,
    /// List the pods of the running skiffd (id, state, namespace/name), one a line.
    Pods {
        /// Stop and remove every pod (and its containers); fails if any is left.
        #[arg(long)]
        remove: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the complete default configuration, commented.
    Default,
    /// Validate a configuration file (`-` or /dev/stdin for standard input).
    Check { file: PathBuf },
    /// Print one value of the configuration in force (file and flags), as scripts need it:
    /// e.g. `network.bridge`, `root`, `listen` and `network.nft_table` (resolved).
    Get { key: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skiffd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        root: cli.root,
        state: cli.state,
        listen: cli.listen,
        log_level: cli.log_level,
        log_format: cli.log_format,
        log_file: cli.log_file,
    };
    match cli.command {
        Some(Command::Config { command: ConfigCommand::Default }) => {
            print!("{DEFAULT_CONFIG_TOML}");
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Config { command: ConfigCommand::Check { file } }) => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?
            };
            Config::parse(&text, &file)?;
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Config { command: ConfigCommand::Get { key } }) => {
            let mut config = Config::load(cli.config.as_deref())?;
            config.apply(overrides)?;
            println!("{}", config.get(&key)?);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Pods { remove }) => {
            let mut config = Config::load(cli.config.as_deref())?;
            config.apply(overrides)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let (_, left) = rt.block_on(cri_server::admin::pods(&config.socket_path(), remove))?;
            Ok(if left == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Some(Command::Check) => {
            let mut config = Config::load(cli.config.as_deref())?;
            config.apply(overrides)?;
            let ok = cri_server::preflight::print(&cri_server::preflight::run(&config));
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        None => {
            let mut config = Config::load(cli.config.as_deref())?;
            config.apply(overrides)?;
            cri_server::logging::init(&config.log_level, config.log_format, &config.log_file)
                .with_context(|| format!("cannot open the log file {}", config.log_file.display()))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("skiffd")
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(cri_server::server::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

//! `cargo xtask <command>`: everything the README promises, from a fresh Debian 12 machine.

mod agent;
mod bench;
mod clis;
mod demo;
mod fuzz;
mod image;
mod provider_check;
mod setup;
mod shell;
mod test;
mod vmtools;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the system packages and toolchain pieces the project needs.
    Setup,
    /// Build the static, stripped release agent in both flavours (the CLI VM's without the
    /// desktop, the browser VM's with it) and print both sizes.
    Agent,
    /// Build a VM image (kernel + initramfs with the static agent as PID 1); prints its paths.
    Image {
        /// Which image.
        #[command(subcommand)]
        which: image::Which,
        /// Also make the golden snapshot browser VMs are restored from (browser image only; the
        /// demo's machine: 1 GiB, 2 vCPUs, a network card).
        #[arg(long, global = true)]
        snapshot: bool,
    },
    /// The whole test suite: setup, formatting, lints, every test.
    Test,
    /// Run a benchmark; prints `name=value` lines.
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        which: bench::Which,
    },
    /// Fuzz the login-URL detector, or with --all every target (cargo fuzz), for a bounded time
    /// each.
    Fuzz {
        /// How long to fuzz each target.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u64,
        /// Every target, not only the URL detector.
        #[arg(long)]
        all: bool,
    },
    /// Serve the host service and its page over real microVMs (`--check`: walk it headless).
    Demo(demo::DemoArgs),
    /// Run every login mode of the newest published CLIs (and the pinned ones) through the
    /// agent and check what the provider rules report against an independent reading.
    ProviderCheck,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The libraries' logs (QEMU's phases, the backend's choices) for whoever asks, e.g.
    // `XTASK_LOG=orchestrator=info cargo xtask bench snapshot`; quiet otherwise, since the
    // commands print their own progress.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XTASK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Agent => agent::build().map(|_| ()),
        Command::Image { which, snapshot } => image::run(which, snapshot),
        Command::Test => test::run(),
        Command::Bench { which } => bench::run(which),
        Command::Fuzz { seconds, all } => fuzz::run(seconds, all),
        Command::Demo(args) => demo::run(args),
        Command::ProviderCheck => provider_check::run(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! Command line (clap): one binary, a subcommand per job (SPEC §1).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "otpdial",
    version,
    about = "Voice-call OTP gateway: reads one-time codes to phones over SIP"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: HTTP API, SIP user agent, dialer.
    Serve {
        /// TOML config file (or OTPDIAL_CONFIG).
        #[arg(long, env = "OTPDIAL_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Zero-setup run: a built-in test phone answers one verification call
    /// on loopback; prints what it heard and checks it through the API.
    Demo,
    /// Apply database migrations (serve also does this on start).
    Migrate {
        #[arg(long, env = "OTPDIAL_CONFIG")]
        config: Option<PathBuf>,
    },
    /// API keys.
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Prompt packs.
    Prompts {
        #[command(subcommand)]
        command: PromptsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum PromptsCommand {
    /// Load and validate prompt packs as the gateway would (`DIR/<locale>/pack.toml`,
    /// or the built-in packs without DIR); print each phrase and its duration. Exits
    /// non-zero with a message naming the file on any error.
    Check { dir: Option<PathBuf> },
}

#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Print a new token once, and the config lines that accept it.
    New {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, required = true)]
        scope: Vec<ScopeArg>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScopeArg {
    Verify,
    Admin,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config and print the effective settings, secrets masked.
    Check { file: PathBuf },
}

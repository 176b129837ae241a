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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: HTTP API, SIP user agent, dialer.
    #[command(
        after_help = "Example:\n  otpdial serve --config /etc/otpdial/otpdial.toml --log-format json\n\nStops on SIGTERM/Ctrl-C: no new calls; calls in progress get [dialer] shutdown_grace."
    )]
    Serve {
        /// TOML config file (or OTPDIAL_CONFIG).
        #[arg(long, env = "OTPDIAL_CONFIG")]
        config: Option<PathBuf>,
        /// Log lines as text for people or JSON (one object per line) for a log
        /// pipeline; a call's lines carry its verification id and SIP Call-ID.
        #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "OTPDIAL_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Zero-setup run: a built-in test phone answers one verification call
    /// on loopback; prints what it heard and checks it through the API.
    #[command(
        after_help = "Example:\n  otpdial demo        # exits 0 when the code the phone heard is approved"
    )]
    Demo,
    /// One call right now, without the API (ops/QA smoke test); prints the SIP outcome.
    #[command(
        after_help = "Example:\n  otpdial call --to +31612345678 --code 4815 --locale nl --config otpdial.toml"
    )]
    Call {
        /// E.164 number (or national, read in verification.default_region) or a sip: URI.
        #[arg(long)]
        to: String,
        /// Digits to read out; random if omitted.
        #[arg(long)]
        code: Option<String>,
        /// Prompt pack, e.g. nl or en; verification.default_locale if omitted.
        #[arg(long)]
        locale: Option<String>,
        /// Trunk name; the first matching trunk by priority if omitted.
        #[arg(long)]
        trunk: Option<String>,
        /// TOML config file (or OTPDIAL_CONFIG).
        #[arg(long, env = "OTPDIAL_CONFIG")]
        config: Option<PathBuf>,
    },
    /// SIP trunks: check that each one answers and accepts the credentials.
    #[command(after_help = "Example:\n  otpdial trunk check --config otpdial.toml")]
    Trunk {
        #[command(subcommand)]
        command: TrunkCommand,
    },
    /// Apply database migrations (serve also does this on start).
    #[command(
        after_help = "Example:\n  OTPDIAL_DATABASE__URL=postgres://otpdial@db/otpdial otpdial migrate"
    )]
    Migrate {
        /// TOML config file (or OTPDIAL_CONFIG).
        #[arg(long, env = "OTPDIAL_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the retention job once: delete personal data older than the retention
    /// time (GDPR data minimisation)
    ///
    /// Deletes finished verifications, their calls, attempts and webhook deliveries, and routine audit
    /// rows older than --older-than (default: [database] retention); audit rows that
    /// are evidence of abuse are kept until [database] audit_retention with their
    /// numbers and user ids hashed. Never touches a pending verification or a call in
    /// progress. Safe while the gateway runs.
    #[command(
        after_help = "Examples:\n  otpdial purge --older-than 30d --config /etc/otpdial/otpdial.toml\n  otpdial purge --config /etc/otpdial/otpdial.toml     # [database] retention"
    )]
    Purge {
        /// Age of the rows to remove, e.g. 30d, 12h, 1y (at least 1h).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// TOML config file (or OTPDIAL_CONFIG).
        #[arg(long, env = "OTPDIAL_CONFIG")]
        config: Option<PathBuf>,
    },
    /// API keys: make a bearer token and the config lines that accept it.
    #[command(after_help = "Example:\n  otpdial apikey new --name auth-service --scope verify")]
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Configuration files: validate one and print the effective settings.
    #[command(after_help = "Example:\n  otpdial config check /etc/otpdial/otpdial.toml")]
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Prompt packs: load and check them as the gateway would.
    #[command(after_help = "Example:\n  otpdial prompts check /etc/otpdial/prompts")]
    Prompts {
        #[command(subcommand)]
        command: PromptsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum PromptsCommand {
    /// Load and check prompt packs as the gateway would; print each phrase with its
    /// duration, level and problems. Exits non-zero, naming the file, when a pack does
    /// not load or a problem is found.
    #[command(
        after_help = "Examples:\n  otpdial prompts check                           # the built-in packs\n  otpdial prompts check /etc/otpdial/prompts      # a folder of packs (<locale>/pack.toml)\n  otpdial prompts check /etc/otpdial/prompts/nl   # one pack's folder"
    )]
    Check {
        /// One pack's folder (holding pack.toml) or a folder of packs; the built-in
        /// packs if omitted.
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TrunkCommand {
    /// REGISTER (register = true) or OPTIONS to each trunk; prints reachability, round
    /// trip time and the auth result. Exits non-zero if any trunk failed.
    #[command(
        after_help = "Examples:\n  otpdial trunk check --config otpdial.toml\n  otpdial trunk check primary --config otpdial.toml"
    )]
    Check {
        /// Only this trunk.
        name: Option<String>,
        /// TOML config file (or OTPDIAL_CONFIG).
        #[arg(long, env = "OTPDIAL_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Print a new token once, and the config lines that accept it.
    #[command(after_help = "Example:\n  otpdial apikey new --name auth-service --scope verify")]
    New {
        /// Name of the key in the config and the logs, e.g. the client's name.
        #[arg(long)]
        name: String,
        /// What the token may do: verify (start and check verifications) or admin
        /// (dashboard, call records, QA phones); repeat for both.
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
    /// Load a config as serve would (the file, OTPDIAL_* overrides, *_env secrets),
    /// validate it and print the effective settings with every secret masked. Exits
    /// non-zero with a message naming the key and the file when it is not valid.
    #[command(after_help = "Example:\n  otpdial config check /etc/otpdial/otpdial.toml")]
    Check {
        /// The TOML config file to check.
        file: PathBuf,
    },
}

//! Thin entry point: parse the command line, load config, init tracing, run.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use otpdial::cli::{
    ApikeyCommand, Cli, Command, ConfigCommand, LogFormat, PromptsCommand, ScopeArg, TrunkCommand,
};
use otpdial::config::Settings;

fn init_tracing(default: &str) {
    init_tracing_as(default, LogFormat::Text);
}

/// Logs to stderr; `RUST_LOG` overrides the level. Colours only on a terminal
/// (a log file or journald gets plain text). In JSON each line is one
/// object with the fields of the spans it happened in (`verification`,
/// `call`, `trunk`, `sip_call_id` for a call's lines).
fn init_tracing_as(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal as _;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .flatten_event(true)
            .init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("otpdial: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, log_format } => {
            init_tracing_as("info", log_format);
            let settings = Settings::load(config.as_deref())?;
            otpdial::app::run(settings, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => {
            init_tracing("warn");
            let ok = otpdial::demo::run(&mut std::io::stdout()).await?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Call {
            to,
            code,
            locale,
            trunk,
            config,
        } => {
            init_tracing("warn");
            let settings = Settings::load(config.as_deref())?;
            let req = otpdial::ops::CallRequest {
                to,
                code,
                locale,
                trunk,
            };
            let report = otpdial::ops::call(&settings, req).await?;
            print!("{}", report.render());
            Ok(if report.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Trunk {
            command: TrunkCommand::Check { name, config },
        } => {
            init_tracing("warn");
            let settings = Settings::load(config.as_deref())?;
            let results = otpdial::ops::trunk_check_targets(&settings, name.as_deref()).await?;
            for check in &results {
                print!("{}", check.render());
            }
            Ok(if results.iter().all(|c| c.probe.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Migrate { config } => migrate(config).await,
        Command::Purge { older_than, config } => {
            init_tracing("warn");
            let settings = Settings::load(config.as_deref())?;
            let report = otpdial::retention::purge_command(&settings, older_than).await?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Apikey {
            command: ApikeyCommand::New { name, scope },
        } => apikey_new(name, scope),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(file),
        Command::Prompts {
            command: PromptsCommand::Check { dir },
        } => prompts_check(dir),
    }
}

/// `otpdial migrate`: brings the database to the current schema.
async fn migrate(config: Option<std::path::PathBuf>) -> anyhow::Result<ExitCode> {
    init_tracing("info");
    let settings = Settings::load(config.as_deref())?;
    let store = otpdial::store::Store::connect(
        &settings.database.url,
        1,
        std::time::Duration::from_secs(10),
    )
    .await?;
    let change = store.migrate().await.with_context(|| {
        format!(
            "database {}",
            otpdial::config::masked_url(&settings.database.url)
        )
    })?;
    println!(
        "migrations applied to {}: {}",
        otpdial::config::masked_url(&settings.database.url),
        change.describe()
    );
    Ok(ExitCode::SUCCESS)
}

/// `otpdial apikey new`: a token to give the client, and the `[[api.keys]]` entry
/// holding its hash.
fn apikey_new(name: String, scope: Vec<ScopeArg>) -> anyhow::Result<ExitCode> {
    let token = otpdial::api::new_token()?;
    let scopes: Vec<&str> = scope
        .iter()
        .map(|s| match s {
            ScopeArg::Verify => "\"verify\"",
            ScopeArg::Admin => "\"admin\"",
        })
        .collect();
    println!("token (shown once, give it to the client): {token}");
    println!();
    println!("[[api.keys]]");
    println!("name = {name:?}");
    println!("hash = \"{}\"", otpdial::api::hash_token(&token));
    println!("scopes = [{}]", scopes.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// `otpdial config check`: the file is valid; the effective settings, secrets masked.
fn config_check(file: std::path::PathBuf) -> anyhow::Result<ExitCode> {
    // Secrets print as `***`, URLs without their passwords (config::schema).
    let settings = Settings::load(Some(&file))?;
    // The prompt packs the settings name must exist, as `serve` demands.
    let prompts = otpdial::app::load_prompts(&settings)?;
    otpdial::app::check_locales(&settings, &prompts.locales())?;
    println!(
        "# {} is valid; effective settings (secrets masked):",
        file.display()
    );
    print!("{}", toml::to_string(&settings)?);
    Ok(ExitCode::SUCCESS)
}

/// `otpdial prompts check`: every phrase of the packs, and their problems.
fn prompts_check(dir: Option<std::path::PathBuf>) -> anyhow::Result<ExitCode> {
    let lib = match &dir {
        Some(dir) => otpdial::media::PromptLibrary::load_dir(dir)?,
        None => otpdial::media::PromptLibrary::builtin_checked()?,
    };
    print!("{}", lib.report());
    let origin = dir.map_or("built-in packs".to_owned(), |d| d.display().to_string());
    let problems = lib.problems();
    if problems.is_empty() {
        println!("{origin}: {} pack(s) OK", lib.locales().len());
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &problems {
        eprintln!("otpdial: {problem}");
    }
    eprintln!(
        "otpdial: {origin}: {} problem(s) in {} pack(s); see docs/prompts.md",
        problems.len(),
        lib.locales().len()
    );
    Ok(ExitCode::FAILURE)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

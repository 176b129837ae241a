//! API throughput: verifications started per second and check latency
//! (p50/p99) over real HTTP on loopback, on SQLite and on PostgreSQL.
//!
//! Run: `cargo bench --bench api_throughput` (PostgreSQL at
//! 127.0.0.1:5432, trust auth, database `test`; skipped if unreachable).
//! Bounded: N starts and M checks per backend, a fixed client concurrency.
//! The dialer is off (no calls are placed) so this measures the API, the
//! rules and the store, not SIP. Every rule is on, as in production: rate
//! limits, the daily country budget, superseding, the audit record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use otpdial::app::{self, DialerMode};
use otpdial::config::{ApiKeySettings, Scope, Settings};
use serde_json::json;

const STARTS: usize = 4000;
const CHECKS: usize = 2000;
const CONCURRENCY: usize = 32;
const TOKEN: &str = "bench-token";

fn settings(url: String) -> Settings {
    let mut s = Settings::from_toml(
        r#"
[http]
listen = "127.0.0.1:0"
[sip]
listen = "127.0.0.1:0"
[verification]
default_locale = "en"
allow_unregistered_numbers = true
[limits]
per_number = "1000/1m"
per_user = "1000/1m"
per_api_key = "1000000/1m"
[fraud]
default_daily_budget = 1000000
[[trunks]]
name = "bench"
proxy = "sip:127.0.0.1:9"
from = "sip:+31508200000@bench.invalid"
"#,
    )
    .expect("bench settings");
    s.database.url = url;
    s.database.max_connections = 16;
    s.api.keys = vec![ApiKeySettings {
        name: "bench".into(),
        hash: otpdial::api::hash_token(TOKEN),
        scopes: vec![Scope::Verify],
    }];
    s
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn run(name: &str, url: String) -> anyhow::Result<()> {
    let app = app::start(settings(url), DialerMode::Manual).await?;
    let base = app.base_url();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()?;

    // Starts: CONCURRENCY clients, distinct numbers.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ids = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(STARTS)));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, base, next, ids) = (http.clone(), base.clone(), next.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= STARTS {
                    return anyhow::Ok(());
                }
                let to = format!("+3161{:07}", i);
                let resp = http
                    .post(format!("{base}/v1/verifications"))
                    .bearer_auth(TOKEN)
                    .json(&json!({ "to": to, "code": "123456" }))
                    .send()
                    .await?;
                anyhow::ensure!(resp.status() == 201, "start answered {}", resp.status());
                let v: serde_json::Value = resp.json().await?;
                ids.lock()
                    .await
                    .push(v["id"].as_str().unwrap_or_default().to_string());
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let start_secs = began.elapsed().as_secs_f64();

    // Checks: wrong codes spread over the verifications, latency per request.
    let ids = Arc::new(ids.lock().await.clone());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lat = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(CHECKS)));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, base, next, ids, lat) = (
            http.clone(),
            base.clone(),
            next.clone(),
            ids.clone(),
            lat.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= CHECKS {
                    return anyhow::Ok(());
                }
                let id = &ids[i % ids.len()];
                let t0 = Instant::now();
                let resp = http
                    .post(format!("{base}/v1/verifications/{id}/check"))
                    .bearer_auth(TOKEN)
                    .json(&json!({ "code": "000000" }))
                    .send()
                    .await?;
                anyhow::ensure!(resp.status() == 200, "check answered {}", resp.status());
                let _ = resp.bytes().await?;
                lat.lock().await.push(t0.elapsed());
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut lat = lat.lock().await.clone();
    lat.sort();
    println!(
        "{name:<10} starts: {STARTS} in {start_secs:.2} s = {:>6.0}/s | checks: {CHECKS}, p50 {:.2} ms, p99 {:.2} ms (concurrency {CONCURRENCY})",
        STARTS as f64 / start_secs,
        percentile(&lat, 0.50).as_secs_f64() * 1000.0,
        percentile(&lat, 0.99).as_secs_f64() * 1000.0,
    );
    app.stop().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // useful either: there is nothing to filter.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let dir = tempfile::tempdir()?;
    run(
        "sqlite",
        format!("sqlite://{}", dir.path().join("bench.db").display()),
    )
    .await?;

    sqlx::any::install_default_drivers();
    use sqlx::Connection;
    match sqlx::AnyConnection::connect("postgres://postgres@127.0.0.1:5432/test").await {
        Ok(mut conn) => {
            let db = format!("otpdial_bench_{}", ulid::Ulid::new()).to_lowercase();
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(&mut conn)
                .await?;
            run(
                "postgres",
                format!("postgres://postgres@127.0.0.1:5432/{db}"),
            )
            .await?;
            sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
                .execute(&mut conn)
                .await?;
        }
        Err(e) => println!("postgres   skipped: {e}"),
    }
    Ok(())
}

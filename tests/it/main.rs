//! Integration tests: one binary that boots the real gateway (HTTP on port
//! 0, SIP on a free loopback port, SQLite or PostgreSQL) against real SIP
//! peers: SIPp scenarios and the built-in test phone.

#![allow(clippy::unwrap_used)]

mod admin_dashboard;
mod api_basics;
mod api_rules;
mod baresip;
mod callee;
mod calls_sipp;
mod canary;
mod carrier;
mod cli_config;
mod demo_path;
mod dialer_durable;
mod dialer_faults;
mod dns;
mod docker_configs;
mod faults_disk;
mod faults_net;
mod faults_old_db;
mod faults_retention;
mod faults_rtp_record;
mod faults_upgrade;
mod fuzz_corpus;
mod helpers;
mod logs;
mod media_dtmf;
mod media_key_gates;
mod media_prompts_cli;
mod media_srtp;
mod metrics;
mod procs;
mod qa_registrar;
mod registration;
mod relay;
mod risk_hook;
mod routing;
mod sip_kamailio;
mod sip_policy;
mod sip_scenarios;
mod softphone;
mod tempgres;

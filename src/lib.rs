//! credproxy: a sidecar proxy that takes API keys away from AI agents. Requests go through a
//! deny-by-default policy; the agent's credentials are stripped and a per-tool one is injected.

pub mod accept;
pub mod admin;
pub mod audit;
pub mod body;
pub mod certs;
pub mod clock;
pub mod config;
pub mod creds;
pub mod demo;
pub mod digest;
pub mod error;
pub mod explain;
pub mod inject;
pub mod inventory;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod proxy;
pub mod replace;
pub mod serve;
pub mod state;
pub mod status;
pub mod tls;

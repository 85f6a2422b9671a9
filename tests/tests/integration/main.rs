//! Warren's integration tests: one binary, one module per area. Each test starts a real
//! broker on an ephemeral port and drives it with real clients (lapin, amqprs) over TCP.

mod access;
mod alarms;
mod auth;
mod basic;
mod cluster;
mod cluster_common;
mod cluster_faults;
mod cluster_lifecycle;
mod cluster_remote;
mod config_file;
mod confirms_tx;
mod connection;
mod dead_lettering;
mod definitions;
mod durability;
mod exchanges;
mod extensions;
mod http_api;
mod perf;
mod policies;
mod queues;
mod raw_frames;
mod shovel;
mod smoke;
mod tls;
mod warrenctl;

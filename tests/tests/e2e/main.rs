//! End-to-end tests: real pools, miners, (later) servers and agents on 127.0.0.1.

/// The engine and the Stratum client mining against the validating test pool over TCP.
mod stratum_mining;

/// The server's agent hub over real sockets: handshake, acks, dedup, refusals, orders.
mod server_hub;

/// Telemetry streams, the signed welcome time and clock offsets, for old and new agents.
mod telemetry_streams;

/// Orders through the hub: config pushes in version order, command waiters that end.
mod hub_orders;

/// Rollouts: a target's desired configs changed in one request, converging per rig.
mod rollouts;

/// The server's REST API, OpenAPI document, metrics and restart.
mod server_api;

/// The API surface: dangerous commands, wallets, config ranges and audit, JSON errors,
/// /metrics off loopback, enrollment limits.
mod api_surface;

/// The real agent binary against the real server and test pools.
mod agent_server;

/// `rigfleet-agent simulate` against the real server.
mod simulate;

/// Rotating the server's signing key with rigs that roll over by a signed order.
mod key_rotation;

/// The systemd units of `deploy/systemd/` against systemd and the real agent.
mod deploy_units;

/// `rigfleet-server demo` from a clean folder, as the README's first command runs it.
mod demo;

/// PostgreSQL vanishing under a running server and the real agent.
mod database_outage;

/// Short versions of the fault harness's scenarios (database cuts, kill -9, clock skew, rig
/// removal, a noisy agent, full disks).
mod fault_short;

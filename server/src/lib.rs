//! rigfleet's central server: agent hub, storage, REST API, metrics and web UI. Filled in by the
//! server-core issue.

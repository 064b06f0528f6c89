//! Every size bound of the protocol in one place. The server and the agent check these on every
//! frame they receive, before and after parsing, so a hostile peer cannot make either side
//! allocate without bound.

/// Largest WebSocket frame or message either side accepts.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Most telemetry samples in one `telemetry` message: an hour at the default 10 s interval, so a
/// reconnecting agent drains its queue in a few hundred messages.
pub const MAX_SAMPLES_PER_BATCH: usize = 360;
/// Most rigs one agent may front (a LAN-ASIC gateway).
pub const MAX_RIGS_PER_AGENT: usize = 1024;
/// Most devices per rig.
pub const MAX_DEVICES_PER_RIG: usize = 256;
/// Most pools in a desired config.
pub const MAX_POOLS: usize = 16;
/// Longest id (rig, agent, device, command).
pub const MAX_ID_LEN: usize = 128;
/// Longest short name (hostname, model, algorithm, worker).
pub const MAX_NAME_LEN: usize = 256;
/// Longest URL.
pub const MAX_URL_LEN: usize = 512;
/// Longest free text (event messages, command output, error messages).
pub const MAX_TEXT_LEN: usize = 8192;
/// Longest order payload (the JSON text inside a signed order).
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Most entries in a small list (tags, applied-config reports, acked seqs) that is not one of the
/// above.
pub const MAX_LIST_LEN: usize = 1024;

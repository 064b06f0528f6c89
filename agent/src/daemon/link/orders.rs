//! The gate every signed order passes before anything acts on it: signature by the pinned key,
//! a rig this agent fronts, a counter above the last accepted one (made durable before the order
//! runs), and an expiry not passed by the server's clock as estimated from the handshake.
//! A refusal becomes an `order_refused` event; its text names the check that failed, never the
//! payload (which may hold pool passwords).

use std::collections::BTreeMap;
use std::path::PathBuf;

use rigfleet_proto::agent_to_server::{Event, Severity};
use rigfleet_proto::signing::{OrderKind, SignedOrder};
use rigfleet_proto::{AgentMessage, RigId};

use super::now_unix_ms;
use crate::daemon::identity::{Identity, OrderCounters};

/// Where accepted counters are kept.
pub trait CounterStore {
    /// The last accepted counter of `rig`.
    fn last(&self, rig: &RigId) -> Option<u64>;
    /// Records `counter` for `rig`, durably where the store is durable.
    fn accept(&mut self, rig: &RigId, counter: u64) -> Result<(), String>;
}

/// Counters in `order_counters.json` of the state folder (a real rig).
#[derive(Debug)]
pub struct PersistedCounters {
    /// The counters.
    pub counters: OrderCounters,
    /// The state folder.
    pub dir: PathBuf,
}

impl CounterStore for PersistedCounters {
    fn last(&self, rig: &RigId) -> Option<u64> {
        self.counters.last(rig)
    }

    fn accept(&mut self, rig: &RigId, counter: u64) -> Result<(), String> {
        self.counters
            .accept(rig, counter, &self.dir)
            .map_err(|e| format!("cannot persist the order counter: {e}"))
    }
}

/// Counters in memory (simulated agents).
#[derive(Debug, Default)]
pub struct MemoryCounters(pub BTreeMap<RigId, u64>);

impl CounterStore for MemoryCounters {
    fn last(&self, rig: &RigId) -> Option<u64> {
        self.0.get(rig).copied()
    }

    fn accept(&mut self, rig: &RigId, counter: u64) -> Result<(), String> {
        self.0.insert(rig.clone(), counter);
        Ok(())
    }
}

/// The wire name of an order kind.
pub fn kind_name(kind: OrderKind) -> &'static str {
    match kind {
        OrderKind::SetConfig => "set_config",
        OrderKind::Command => "command",
        OrderKind::KeyRollover => "key_rollover",
    }
}

/// Checks `order` and, when it passes, records its counter (before the caller acts on it, so a
/// crash cannot let a replay through). `clock_offset_ms` is the handshake's server − agent.
pub fn admit(
    identity: &Identity,
    counters: &mut dyn CounterStore,
    kind: OrderKind,
    order: &SignedOrder,
    clock_offset_ms: i64,
) -> Result<(), String> {
    let now_server_ms = now_unix_ms().saturating_add(clock_offset_ms);
    identity
        .verify_order(kind, order, counters.last(&order.rig_id), now_server_ms)
        .map_err(|e| e.to_string())?;
    counters.accept(&order.rig_id, order.counter)
}

/// The `order_refused` event for a refused order. It names a rig the agent fronts (the server
/// refuses messages about others), whichever rig the order named.
pub fn refusal_event(
    reporting_rig: &RigId,
    kind: OrderKind,
    order: &SignedOrder,
    reason: &str,
) -> AgentMessage {
    let about = if &order.rig_id == reporting_rig {
        String::new()
    } else {
        format!(" for rig {}", short(order.rig_id.as_str()))
    };
    event(
        reporting_rig,
        Severity::Warning,
        "order_refused",
        format!(
            "{} order{about} (counter {}) refused: {reason}",
            kind_name(kind),
            order.counter
        ),
    )
}

/// An event message, its text bounded to the protocol's limit.
pub fn event(rig: &RigId, severity: Severity, kind: &str, message: String) -> AgentMessage {
    AgentMessage::Event(Event {
        rig_id: rig.clone(),
        time_unix_ms: now_unix_ms(),
        severity,
        kind: kind.to_string(),
        message: bound_text(message),
    })
}

/// Cuts `text` to the protocol's free-text limit on a character boundary.
pub fn bound_text(mut text: String) -> String {
    let limit = rigfleet_proto::limits::MAX_TEXT_LEN;
    if text.len() > limit {
        let mut cut = limit - 3;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// A JSON payload error without the payload: serde's messages quote offending values, which may
/// be a password.
pub fn payload_error(what: &str, e: &serde_json::Error) -> String {
    let category = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "wrong shape or field types",
        serde_json::error::Category::Eof => "truncated",
    };
    format!(
        "{what} payload is {category} (line {}, column {})",
        e.line(),
        e.column()
    )
}

fn short(s: &str) -> String {
    s.chars().take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_errors_do_not_quote_values() {
        let e = serde_json::from_str::<rigfleet_proto::config::DesiredConfig>(
            r#"{"version":"hunter2","algorithm":""}"#,
        )
        .expect_err("string version");
        let text = payload_error("set_config", &e);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("wrong shape"), "{text}");
    }

    #[test]
    fn long_texts_are_bounded_on_a_char_boundary() {
        let t = bound_text("é".repeat(10_000));
        assert!(t.len() <= rigfleet_proto::limits::MAX_TEXT_LEN && t.ends_with("..."));
    }
}

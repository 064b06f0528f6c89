//! The latest state of every rig, in memory: what the dashboard, the REST API and /metrics read.
//! It is a cache: a restarted server (or another replica) rebuilds it from the database, and the
//! next telemetry refreshes it.

use std::collections::HashMap;
use std::sync::RwLock;

use rigfleet_proto::telemetry::Sample;
use rigfleet_proto::RigId;
use tokio::sync::broadcast;

/// What is known about one rig right now.
#[derive(Clone, Debug, PartialEq)]
pub struct RigLive {
    /// Database key.
    pub id: i64,
    /// The rig's public id.
    pub uid: RigId,
    /// Display name.
    pub name: String,
    /// Group, if any.
    pub group: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Enrolled with a token that needs an operator's approval, not approved yet.
    pub pending_approval: bool,
    /// Why the rig is flagged (e.g. two agents presented its identity).
    pub flagged: Option<String>,
    /// An agent link for this rig is up now.
    pub connected: bool,
    /// When the server last heard about the rig (telemetry or handshake).
    pub last_seen_ms: Option<i64>,
    /// The newest telemetry sample.
    pub sample: Option<Sample>,
    /// Agent version from the last handshake.
    pub agent_version: Option<String>,
    /// Host name from the last handshake.
    pub hostname: Option<String>,
    /// Telemetry interval the rig was told (for the offline threshold).
    pub telemetry_interval_secs: u32,
    /// Server clock minus the rig's clock at its last handshake (ms).
    pub clock_offset_ms: Option<i64>,
}

impl RigLive {
    /// Sum of the devices' 1-minute hash rates.
    pub fn hashrate_hps(&self) -> f64 {
        self.sample
            .as_ref()
            .map_or(0.0, |s| s.devices.iter().map(|d| d.hashrate_1m_hps).sum())
    }
}

/// Every rig's live state, with a feed of changes for live pages.
pub struct LiveState {
    rigs: RwLock<HashMap<i64, RigLive>>,
    changes: broadcast::Sender<i64>,
}

impl Default for LiveState {
    fn default() -> Self {
        LiveState {
            rigs: RwLock::new(HashMap::new()),
            changes: broadcast::channel(1024).0,
        }
    }
}

impl LiveState {
    /// Rig ids whose state changed, as they change (a lagging reader skips ahead).
    pub fn subscribe(&self) -> broadcast::Receiver<i64> {
        self.changes.subscribe()
    }

    /// Adds or replaces a rig's entry.
    pub fn insert(&self, rig: RigLive) {
        let id = rig.id;
        self.write().insert(id, rig);
        let _ = self.changes.send(id);
    }

    /// Changes a rig's entry in place; false when the rig is unknown.
    pub fn update(&self, id: i64, f: impl FnOnce(&mut RigLive)) -> bool {
        let found = match self.write().get_mut(&id) {
            Some(rig) => {
                f(rig);
                true
            }
            None => false,
        };
        if found {
            let _ = self.changes.send(id);
        }
        found
    }

    /// Takes a newer sample (an older one, resent after an outage, does not replace it).
    pub fn record_sample(&self, id: i64, sample: &Sample, now_ms: i64) {
        self.update(id, |rig| {
            rig.last_seen_ms = Some(now_ms);
            let newer = rig
                .sample
                .as_ref()
                .is_none_or(|old| sample.seq > old.seq || sample.time_unix_ms > old.time_unix_ms);
            if newer {
                rig.sample = Some(sample.clone());
            }
        });
    }

    /// Forgets a rig.
    pub fn remove(&self, id: i64) {
        self.write().remove(&id);
        let _ = self.changes.send(id);
    }

    /// A copy of one rig.
    pub fn get(&self, id: i64) -> Option<RigLive> {
        self.read().get(&id).cloned()
    }

    /// Runs `f` over all rigs under the read lock (no copies for /metrics).
    pub fn with_all<T>(&self, f: impl FnOnce(&HashMap<i64, RigLive>) -> T) -> T {
        f(&self.read())
    }

    /// Number of rigs with a live agent link.
    pub fn connected_count(&self) -> usize {
        self.read().values().filter(|r| r.connected).count()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<i64, RigLive>> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.rigs.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<i64, RigLive>> {
        self.rigs.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigfleet_proto::telemetry::{DeviceSample, RigSample};

    fn rig(sample_time: Option<i64>, devices: Vec<DeviceSample>) -> RigLive {
        RigLive {
            id: 1,
            uid: "rig-1".into(),
            name: "a".into(),
            group: None,
            tags: vec![],
            pending_approval: false,
            flagged: None,
            connected: true,
            last_seen_ms: None,
            sample: sample_time.map(|t| Sample {
                seq: 1,
                time_unix_ms: t,
                rig: RigSample::default(),
                devices,
                pool: None,
            }),
            agent_version: None,
            hostname: None,
            telemetry_interval_secs: 10,
            clock_offset_ms: None,
        }
    }

    #[test]
    fn older_samples_do_not_replace_newer_ones() {
        let live = LiveState::default();
        let mut changes = live.subscribe();
        live.insert(rig(Some(5_000), vec![]));
        let mut old = live.get(1).unwrap().sample.unwrap();
        old.seq = 0;
        old.time_unix_ms = 1_000;
        live.record_sample(1, &old, 9_000);
        let now = live.get(1).unwrap();
        assert_eq!(now.sample.unwrap().time_unix_ms, 5_000);
        assert_eq!(now.last_seen_ms, Some(9_000));
        assert_eq!(changes.try_recv().unwrap(), 1);
    }
}

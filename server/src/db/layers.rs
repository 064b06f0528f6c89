//! What a rig's desired config is built from (issue 12): profiles as layers, groups with their
//! profile and overrides, each rig's own profile, overrides and physical place; and storing
//! many rigs' new desired configs in one transaction (a rollout to 1,000 rigs is one commit,
//! not 1,000).

use std::collections::{BTreeMap, HashMap};

use rigfleet_proto::config::DesiredConfig;

use super::row::{bind_args, Arg, RowExt};
use super::{dispatch, to_u64, DesiredRow, Store, StoreError, WriteBegin};
use crate::fleet::layers::ConfigLayer;

/// Desired configs kept per rig (as in `configs.rs`).
const HISTORY_KEPT: i64 = 20;

/// Rows per multi-row statement (PostgreSQL allows 65,535 bind parameters; SQLite 32,766).
const CHUNK: usize = 500;

/// What pool passwords are sealed for (the same purpose as desired configs use, so a layer
/// copied from a config opens alike).
const POOL_PASSWORD: &str = "pool-password";

/// Where a rig stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RigPlace {
    pub site: String,
    pub room: String,
    pub rack: String,
    pub slot: String,
}

/// A profile read as a layer.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileLayer {
    pub id: i64,
    pub name: String,
    pub layer: ConfigLayer,
}

/// A group as an object.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupRow {
    pub name: String,
    pub description: String,
    /// Its default profile.
    pub profile_id: Option<i64>,
    /// Profiles per algorithm (what an algorithm switch applies).
    pub algorithm_profiles: BTreeMap<String, i64>,
    pub overrides: ConfigLayer,
    pub created_at_ms: i64,
}

/// One rig's inputs to its desired config.
#[derive(Clone, Debug, PartialEq)]
pub struct RigLayers {
    pub rig_id: i64,
    pub rig_uid: String,
    pub name: String,
    pub group: Option<String>,
    /// The rig's own profile (else its group's applies).
    pub profile_id: Option<i64>,
    pub overrides: ConfigLayer,
    pub place: RigPlace,
    /// Device ids in slot order.
    pub device_ids: Vec<String>,
    /// Algorithms some device of the rig lists.
    pub algorithms: Vec<String>,
    pub desired_version: u64,
    /// Content hash of the current desired config, if any.
    pub desired_hash: Option<String>,
}

/// Everything needed to build the configs of some rigs.
#[derive(Clone, Debug, Default)]
pub struct LayerSnapshot {
    pub rigs: Vec<RigLayers>,
    pub groups: HashMap<String, GroupRow>,
    pub profiles: HashMap<i64, ProfileLayer>,
}

impl Store {
    pub(super) fn seal_layer_json(&self, layer: &ConfigLayer) -> Result<String, StoreError> {
        let mut sealed = layer.clone();
        for pool in sealed.pools.iter_mut().flatten() {
            if !pool.password.is_empty() {
                pool.password = self.seal_secret(POOL_PASSWORD, &pool.password)?;
            }
        }
        serde_json::to_string(&sealed).map_err(|e| StoreError::Invalid(format!("layer json: {e}")))
    }

    fn open_layer(&self, json: &str) -> Result<ConfigLayer, StoreError> {
        let mut layer = ConfigLayer::parse(json)
            .map_err(|e| StoreError::Corrupt(format!("layer json: {e}")))?;
        for pool in layer.pools.iter_mut().flatten() {
            pool.password = self.open_secret(POOL_PASSWORD, &pool.password)?;
        }
        Ok(layer)
    }

    /// The inputs of every rig in `rig_ids` (every rig when `None`), with all groups and
    /// profiles. Four queries whatever the number of rigs.
    pub async fn layer_snapshot(
        &self,
        rig_ids: Option<&[i64]>,
    ) -> Result<LayerSnapshot, StoreError> {
        let mut snap = LayerSnapshot::default();
        let wanted: Option<std::collections::HashSet<i64>> =
            rig_ids.map(|ids| ids.iter().copied().collect());
        dispatch!(self, p => {
            let rows = sqlx::query(
                "SELECT id, rig_uid, name, group_name, profile_id, overrides_json, site, room, rack, slot, desired_version
                 FROM rigs ORDER BY id",
            )
            .fetch_all(p).await?;
            for r in &rows {
                let id = r.i64("id")?;
                if wanted.as_ref().is_some_and(|w| !w.contains(&id)) {
                    continue;
                }
                snap.rigs.push(RigLayers {
                    rig_id: id,
                    rig_uid: r.text("rig_uid")?,
                    name: r.text("name")?,
                    group: r.opt_text("group_name")?,
                    profile_id: r.opt_i64("profile_id")?,
                    overrides: self.open_layer(&r.text("overrides_json")?)?,
                    place: RigPlace {
                        site: r.text("site")?,
                        room: r.text("room")?,
                        rack: r.text("rack")?,
                        slot: r.text("slot")?,
                    },
                    device_ids: Vec::new(),
                    algorithms: Vec::new(),
                    desired_version: to_u64(r.i64("desired_version")?, "desired_version")?,
                    desired_hash: None,
                });
            }
            let index: HashMap<i64, usize> =
                snap.rigs.iter().enumerate().map(|(i, r)| (r.rig_id, i)).collect();
            let hashes = sqlx::query(
                "SELECT d.rig_id, d.content_hash FROM desired_configs d
                 JOIN rigs r ON r.id = d.rig_id AND d.version = r.desired_version",
            )
            .fetch_all(p).await?;
            for h in &hashes {
                if let Some(&i) = index.get(&h.i64("rig_id")?) {
                    snap.rigs[i].desired_hash = Some(h.text("content_hash")?);
                }
            }
            let devices = sqlx::query("SELECT rig_id, device_uid, algorithms FROM devices ORDER BY rig_id, slot")
                .fetch_all(p).await?;
            for d in &devices {
                let Some(&i) = index.get(&d.i64("rig_id")?) else { continue };
                let rig = &mut snap.rigs[i];
                rig.device_ids.push(d.text("device_uid")?);
                for a in d.text("algorithms")?.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                    if !rig.algorithms.iter().any(|x| x == a) {
                        rig.algorithms.push(a.to_string());
                    }
                }
            }
            let groups = sqlx::query(
                "SELECT name, description, profile_id, overrides_json, created_at_ms FROM groups",
            )
            .fetch_all(p).await?;
            for g in &groups {
                let name = g.text("name")?;
                snap.groups.insert(name.clone(), GroupRow {
                    name,
                    description: g.text("description")?,
                    profile_id: g.opt_i64("profile_id")?,
                    algorithm_profiles: BTreeMap::new(),
                    overrides: self.open_layer(&g.text("overrides_json")?)?,
                    created_at_ms: g.i64("created_at_ms")?,
                });
            }
            let per_algo = sqlx::query("SELECT group_name, algorithm, profile_id FROM group_algorithm_profiles")
                .fetch_all(p).await?;
            for a in &per_algo {
                if let Some(g) = snap.groups.get_mut(&a.text("group_name")?) {
                    g.algorithm_profiles.insert(a.text("algorithm")?, a.i64("profile_id")?);
                }
            }
            let profiles = sqlx::query("SELECT id, name, config_json FROM profiles")
                .fetch_all(p).await?;
            for pr in &profiles {
                let id = pr.i64("id")?;
                snap.profiles.insert(id, ProfileLayer {
                    id,
                    name: pr.text("name")?,
                    layer: self.open_layer(&pr.text("config_json")?)?,
                });
            }
        });
        Ok(snap)
    }

    /// Stores a new desired config for each rig (version = its current + 1) in one
    /// transaction, with multi-row statements; returns the rows in the order given. A rig that
    /// no longer exists fails the whole call with `NotFound` and nothing is stored.
    ///
    /// With a rollout, its rows for these rigs take their target version and hash (state
    /// `pending`) in the same transaction; other rollouts' rows still waiting for these rigs to
    /// apply an older version are `superseded`.
    pub async fn store_desired_batch(
        &self,
        items: &[(i64, DesiredConfig)],
        created_by: Option<&str>,
        rollout: Option<i64>,
        now_ms: i64,
    ) -> Result<Vec<(i64, DesiredRow)>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(items.len());
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            for chunk in items.chunks(CHUNK) {
                let ids: Vec<Arg> = chunk.iter().map(|(id, _)| Arg::I64(*id)).collect();
                let marks = placeholders(1, chunk.len());
                let sql = format!(
                    "UPDATE rigs SET desired_version = desired_version + 1 WHERE id IN ({marks}) RETURNING id, desired_version"
                );
                let rows = bind_args!(sqlx::query(&sql), &ids).fetch_all(&mut *tx).await?;
                let mut versions: HashMap<i64, i64> = HashMap::new();
                for r in &rows {
                    versions.insert(r.i64("id")?, r.i64("desired_version")?);
                }
                let mut args = Vec::with_capacity(chunk.len() * 6);
                let mut values = Vec::with_capacity(chunk.len());
                for (i, (rig_id, config)) in chunk.iter().enumerate() {
                    let version = *versions.get(rig_id).ok_or(StoreError::NotFound)?;
                    let mut config = config.clone();
                    config.version = to_u64(version, "version")?;
                    let content_hash = config.content_hash();
                    let b = i * 6;
                    values.push(format!("(${}, ${}, ${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6));
                    args.push(Arg::I64(*rig_id));
                    args.push(Arg::I64(version));
                    args.push(Arg::Text(content_hash.clone()));
                    args.push(Arg::Text(self.sealed_json(&config)?));
                    args.push(Arg::I64(now_ms));
                    args.push(Arg::Text(created_by.unwrap_or("").to_string()));
                    out.push((*rig_id, DesiredRow {
                        version: config.version,
                        content_hash,
                        config,
                        created_at_ms: now_ms,
                        created_by: created_by.map(str::to_string),
                    }));
                }
                let sql = format!(
                    "INSERT INTO desired_configs (rig_id, version, content_hash, config_json, created_at_ms, created_by) VALUES {}",
                    values.join(", ")
                );
                bind_args!(sqlx::query(&sql), &args).execute(&mut *tx).await?;
                let sql = format!(
                    "DELETE FROM desired_configs WHERE rig_id IN ({marks})
                     AND version <= (SELECT r.desired_version FROM rigs r WHERE r.id = desired_configs.rig_id) - {HISTORY_KEPT}"
                );
                bind_args!(sqlx::query(&sql), &ids).execute(&mut *tx).await?;
                let done = &out[out.len() - chunk.len()..];
                let mut args = vec![Arg::I64(now_ms), Arg::I64(rollout.unwrap_or(0))];
                let mut values = Vec::with_capacity(chunk.len());
                for (i, (rig_id, row)) in done.iter().enumerate() {
                    let b = 3 + i * 3;
                    values.push(format!("(${}, ${}, ${})", b, b + 1, b + 2));
                    args.push(Arg::I64(*rig_id));
                    args.push(Arg::I64(i64::try_from(row.version).map_err(|_| StoreError::Invalid("version".into()))?));
                    args.push(Arg::Text(row.content_hash.clone()));
                }
                let values = values.join(", ");
                let sql = format!(
                    "UPDATE rollout_rigs SET state = 'superseded', updated_at_ms = $1
                     FROM (VALUES {values}) AS v
                     WHERE rollout_rigs.rig_id = v.column1 AND rollout_rigs.rollout_id <> $2
                       AND rollout_rigs.state IN ('pending', 'sent') AND rollout_rigs.target_version < v.column2"
                );
                bind_args!(sqlx::query(&sql), &args).execute(&mut *tx).await?;
                if rollout.is_some() {
                    let sql = format!(
                        "UPDATE rollout_rigs SET state = 'pending', target_version = v.column2, target_hash = v.column3,
                           error = NULL, updated_at_ms = $1
                         FROM (VALUES {values}) AS v
                         WHERE rollout_rigs.rollout_id = $2 AND rollout_rigs.rig_id = v.column1"
                    );
                    bind_args!(sqlx::query(&sql), &args).execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
        });
        Ok(out)
    }

    /// Next order counter of each rig, one statement per chunk (so signing a rollout's orders
    /// costs a few round trips, not one per rig). Rigs that no longer exist are left out.
    pub async fn next_order_counters(
        &self,
        rig_ids: &[i64],
    ) -> Result<HashMap<i64, u64>, StoreError> {
        let mut out = HashMap::with_capacity(rig_ids.len());
        for chunk in rig_ids.chunks(CHUNK) {
            let ids: Vec<Arg> = chunk.iter().map(|id| Arg::I64(*id)).collect();
            let sql = format!(
                "UPDATE rigs SET order_counter = order_counter + 1 WHERE id IN ({}) RETURNING id, order_counter",
                placeholders(1, chunk.len())
            );
            dispatch!(self, p => {
                for r in bind_args!(sqlx::query(&sql), &ids).fetch_all(p).await? {
                    out.insert(r.i64("id")?, to_u64(r.i64("order_counter")?, "order_counter")?);
                }
            });
        }
        Ok(out)
    }

    /// The newest desired version of each rig (rigs that no longer exist are left out).
    pub async fn desired_versions(&self, rig_ids: &[i64]) -> Result<HashMap<i64, u64>, StoreError> {
        let mut out = HashMap::with_capacity(rig_ids.len());
        for chunk in rig_ids.chunks(CHUNK) {
            let ids: Vec<Arg> = chunk.iter().map(|id| Arg::I64(*id)).collect();
            let sql = format!(
                "SELECT id, desired_version FROM rigs WHERE id IN ({})",
                placeholders(1, chunk.len())
            );
            dispatch!(self, p => {
                for r in bind_args!(sqlx::query(&sql), &ids).fetch_all(p).await? {
                    out.insert(r.i64("id")?, to_u64(r.i64("desired_version")?, "desired_version")?);
                }
            });
        }
        Ok(out)
    }

    /// Sets a rig's own profile (None: its group's applies).
    pub async fn set_rig_profile(
        &self,
        rig_id: i64,
        profile_id: Option<i64>,
    ) -> Result<(), StoreError> {
        let n = dispatch!(self, p => sqlx::query("UPDATE rigs SET profile_id = $2 WHERE id = $1")
            .bind(rig_id).bind(profile_id).execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Replaces a rig's overrides layer.
    pub async fn set_rig_overrides(
        &self,
        rig_id: i64,
        layer: &ConfigLayer,
    ) -> Result<(), StoreError> {
        let json = self.seal_layer_json(layer)?;
        let n = dispatch!(self, p => sqlx::query("UPDATE rigs SET overrides_json = $2 WHERE id = $1")
            .bind(rig_id).bind(&json).execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Sets the places of many rigs in one transaction: all or none.
    pub async fn set_rig_places(&self, places: &[(i64, RigPlace)]) -> Result<(), StoreError> {
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            for (rig_id, place) in places {
                let n = sqlx::query("UPDATE rigs SET site = $2, room = $3, rack = $4, slot = $5 WHERE id = $1")
                    .bind(rig_id).bind(&place.site).bind(&place.room).bind(&place.rack).bind(&place.slot)
                    .execute(&mut *tx).await?.rows_affected();
                if n == 0 {
                    return Err(StoreError::NotFound);
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Creates a group object.
    pub async fn create_group(&self, group: &GroupRow) -> Result<(), StoreError> {
        let overrides = self.seal_layer_json(&group.overrides)?;
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            let n = sqlx::query(
                "INSERT INTO groups (name, created_at_ms, profile_id, overrides_json, description)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
            )
            .bind(&group.name).bind(group.created_at_ms).bind(group.profile_id).bind(&overrides).bind(&group.description)
            .execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::Conflict(format!("group {} exists", group.name)));
            }
            for (algorithm, profile_id) in &group.algorithm_profiles {
                sqlx::query("INSERT INTO group_algorithm_profiles (group_name, algorithm, profile_id) VALUES ($1, $2, $3)")
                    .bind(&group.name).bind(algorithm).bind(profile_id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Replaces a group's profile, per-algorithm profiles, overrides and description.
    pub async fn update_group(&self, group: &GroupRow) -> Result<(), StoreError> {
        let overrides = self.seal_layer_json(&group.overrides)?;
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            let n = sqlx::query(
                "UPDATE groups SET profile_id = $2, overrides_json = $3, description = $4 WHERE name = $1",
            )
            .bind(&group.name).bind(group.profile_id).bind(&overrides).bind(&group.description)
            .execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            sqlx::query("DELETE FROM group_algorithm_profiles WHERE group_name = $1")
                .bind(&group.name).execute(&mut *tx).await?;
            for (algorithm, profile_id) in &group.algorithm_profiles {
                sqlx::query("INSERT INTO group_algorithm_profiles (group_name, algorithm, profile_id) VALUES ($1, $2, $3)")
                    .bind(&group.name).bind(algorithm).bind(profile_id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Deletes a group; refused while rigs are in it.
    pub async fn delete_group(&self, name: &str) -> Result<(), StoreError> {
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            let members: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rigs WHERE group_name = $1")
                .bind(name).fetch_one(&mut *tx).await?;
            if members > 0 {
                return Err(StoreError::Conflict(format!("group {name} still has {members} rig(s)")));
            }
            let n = sqlx::query("DELETE FROM groups WHERE name = $1")
                .bind(name).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            tx.commit().await?;
        });
        Ok(())
    }
}

/// `$first, $first+1, …` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::super::rigs::tests::one_rig;
    use super::super::test_db::{test_backends, TestDb};
    use super::super::MAX_MIGRATION;
    use super::*;
    use crate::fleet::layers::{build, RigFacts, Source};
    use rigfleet_proto::config::{DeviceSettings, PoolSpec};

    fn config(user: &str) -> DesiredConfig {
        DesiredConfig {
            version: 0,
            algorithm: "sha256d".into(),
            pools: vec![PoolSpec {
                url: "stratum+tcp://pool.example:3333".into(),
                user: user.into(),
                password: "hunter2".into(),
            }],
            devices: vec![DeviceSettings {
                device_id: "dev1".into(),
                enabled: false,
                power_limit_watts: Some(120),
                core_clock_mhz: None,
                memory_clock_mhz: None,
                fan_percent: Some(70),
                threads: None,
            }],
            telemetry_interval_secs: Some(7),
        }
    }

    /// A database as the server before migration 0005 left it: the rigs' desired configs
    /// become their overrides, and building them gives the same content hash (so no rig gets
    /// a new version on upgrade).
    #[tokio::test]
    async fn an_upgraded_database_keeps_every_rigs_config_as_its_overrides() {
        let olds: Vec<TestDb> = MAX_MIGRATION.scope(4, test_backends()).await;
        for db in olds {
            let s = &db.store;
            let a = one_rig(s, "rig-a", 2).await;
            let b = one_rig(s, "rig-b", 1).await;
            let _c = one_rig(s, "rig-c", 1).await;
            s.set_desired_config(a, &config("w.a"), Some("user:x"), 1)
                .await
                .unwrap();
            let before = s
                .set_desired_config(a, &config("w.a2"), Some("user:x"), 2)
                .await
                .unwrap();
            let before_b = s
                .set_desired_config(b, &config("w.b"), None, 3)
                .await
                .unwrap();
            s.set_rig_group(b, Some("hall-b")).await.unwrap();
            s.migrate_fully().await.unwrap();

            let snap = s.layer_snapshot(None).await.unwrap();
            assert_eq!(snap.rigs.len(), 3);
            assert!(
                snap.groups.contains_key("hall-b"),
                "named groups become objects"
            );
            for (rig, old) in [(&snap.rigs[0], &before), (&snap.rigs[1], &before_b)] {
                assert_eq!(rig.overrides.pools.as_ref().unwrap()[0].password, "hunter2");
                let facts = RigFacts {
                    name: rig.name.clone(),
                    group: rig.group.clone(),
                    device_ids: rig.device_ids.clone(),
                };
                let built = build(&[(Source::Rig, &rig.overrides)], &facts)
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    built.config.content_hash(),
                    old.content_hash,
                    "{}",
                    rig.rig_uid
                );
            }
            assert!(
                snap.rigs[2].overrides.is_empty(),
                "a rig without a config stays without"
            );
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn a_batch_of_desired_configs_is_one_commit_with_increasing_versions() {
        for db in test_backends().await {
            let s = &db.store;
            let mut ids = Vec::new();
            for i in 0..30 {
                ids.push(one_rig(s, &format!("rig-{i}"), 1).await);
            }
            s.set_desired_config(ids[0], &config("first"), None, 1)
                .await
                .unwrap();
            let items: Vec<(i64, DesiredConfig)> = ids
                .iter()
                .map(|id| (*id, config(&format!("w.{id}"))))
                .collect();
            let rows = s
                .store_desired_batch(&items, Some("rollout:1"), None, 5)
                .await
                .unwrap();
            assert_eq!(rows.len(), 30);
            assert_eq!(rows[0].1.version, 2);
            assert!(rows[1..].iter().all(|(_, r)| r.version == 1));
            for (id, row) in &rows {
                let stored = s.desired_config(*id).await.unwrap().unwrap();
                assert_eq!(&stored, row);
            }
            // A rig that vanished fails the whole batch: nothing is stored.
            let gone = vec![(ids[1], config("x")), (i64::MAX, config("y"))];
            assert!(matches!(
                s.store_desired_batch(&gone, None, None, 6).await,
                Err(StoreError::NotFound)
            ));
            assert_eq!(s.desired_config(ids[1]).await.unwrap().unwrap().version, 1);
            let counters = s.next_order_counters(&ids[..3]).await.unwrap();
            assert_eq!(counters.len(), 3);
            assert!(counters.values().all(|c| *c == 1));
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn groups_are_objects_that_cannot_be_deleted_while_they_hold_rigs() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "rig-g", 1).await;
            let mut g = GroupRow {
                name: "hall-a".into(),
                description: "north".into(),
                profile_id: None,
                algorithm_profiles: BTreeMap::new(),
                overrides: ConfigLayer {
                    telemetry_interval_secs: Some(20),
                    ..Default::default()
                },
                created_at_ms: 1,
            };
            s.create_group(&g).await.unwrap();
            assert!(matches!(
                s.create_group(&g).await,
                Err(StoreError::Conflict(_))
            ));
            s.set_rig_group(rig, Some("hall-a")).await.unwrap();
            assert!(matches!(
                s.delete_group("hall-a").await,
                Err(StoreError::Conflict(_))
            ));
            g.description = "south".into();
            s.update_group(&g).await.unwrap();
            let snap = s.layer_snapshot(Some(&[rig])).await.unwrap();
            assert_eq!(snap.groups["hall-a"].description, "south");
            assert_eq!(
                snap.groups["hall-a"].overrides.telemetry_interval_secs,
                Some(20)
            );
            s.set_rig_group(rig, None).await.unwrap();
            s.delete_group("hall-a").await.unwrap();
            let place = RigPlace {
                site: "s1".into(),
                room: "r2".into(),
                rack: "A3".into(),
                slot: "7".into(),
            };
            assert!(matches!(
                s.set_rig_places(&[(rig, place.clone()), (i64::MAX, place.clone())])
                    .await,
                Err(StoreError::NotFound)
            ));
            assert_eq!(
                s.layer_snapshot(Some(&[rig])).await.unwrap().rigs[0].place,
                RigPlace::default()
            );
            s.set_rig_places(&[(rig, place.clone())]).await.unwrap();
            assert_eq!(
                s.layer_snapshot(Some(&[rig])).await.unwrap().rigs[0].place,
                place
            );
            db.cleanup().await;
        }
    }
}

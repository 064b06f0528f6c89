//! Rollouts (issue 12): one action that changes the desired config of a target of rigs,
//! recorded with a row per rig (pending → sent → applied / failed), the layer edits it made (to
//! roll back), and its stage plan. The layer edits and the rollout's rows are one transaction;
//! each wave's desired configs are stored by [`Store::store_desired_batch`] with the rollout's
//! rows updated in the same transaction, so a crash between the two leaves rows without a
//! target version that the rollout driver stores on its next pass.

use super::layers::GroupRow;
use super::row::RowExt;
use super::{dispatch, to_i64, to_u64, Store, StoreError, WriteBegin};
use crate::fleet::layers::ConfigLayer;

/// Layer edits a rollout makes, all in one transaction.
#[derive(Clone, Debug, Default)]
pub struct LayerEdits {
    /// Profile id → its new layer.
    pub profiles: Vec<(i64, ConfigLayer)>,
    /// Groups to rewrite (profile, per-algorithm profiles, overrides, description).
    pub groups: Vec<GroupRow>,
    /// Rig id → its own profile (None: the group's).
    pub rig_profiles: Vec<(i64, Option<i64>)>,
    /// Rig id → its new overrides.
    pub rig_overrides: Vec<(i64, ConfigLayer)>,
}

impl LayerEdits {
    /// Whether nothing is edited.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
            && self.groups.is_empty()
            && self.rig_profiles.is_empty()
            && self.rig_overrides.is_empty()
    }
}

/// What a rollout's layer edits replaced, as stored.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Undo {
    profiles: Vec<(i64, String)>,
    groups: Vec<UndoGroup>,
    rig_profiles: Vec<(i64, Option<i64>)>,
    rig_overrides: Vec<(i64, String)>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct UndoGroup {
    name: String,
    profile_id: Option<i64>,
    overrides_json: String,
    description: String,
    algorithm_profiles: Vec<(String, i64)>,
}

/// A rollout's header as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutRow {
    pub id: i64,
    pub kind: String,
    /// running, halted, completed, rolled_back.
    pub state: String,
    pub target_json: String,
    pub action_json: String,
    pub stage_json: Option<String>,
    pub undo_json: String,
    pub summary: String,
    pub created_by: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

/// One rig of a rollout.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutRigRow {
    pub rig_id: i64,
    pub rig_uid: String,
    pub rig_name: String,
    /// 0 = first wave.
    pub wave: i64,
    /// waiting (its wave not released), pending (stored, rig offline), sent, applied, failed,
    /// rolled_back, superseded (a newer change replaced it before it applied).
    pub state: String,
    pub previous_version: Option<u64>,
    pub target_version: Option<u64>,
    pub target_hash: Option<String>,
    pub error: Option<String>,
    pub updated_at_ms: i64,
}

/// A new rollout.
#[derive(Clone, Debug)]
pub struct NewRollout<'a> {
    pub kind: &'a str,
    pub target_json: &'a str,
    pub action_json: &'a str,
    pub stage_json: Option<&'a str>,
    pub summary: &'a str,
    pub created_by: &'a str,
    pub now_ms: i64,
    /// (rig id, wave, version it has now).
    pub rigs: &'a [(i64, i64, u64)],
}

fn rollout_from(r: &impl RowExt) -> Result<RolloutRow, StoreError> {
    Ok(RolloutRow {
        id: r.i64("id")?,
        kind: r.text("kind")?,
        state: r.text("state")?,
        target_json: r.text("target_json")?,
        action_json: r.text("action_json")?,
        stage_json: r.opt_text("stage_json")?,
        undo_json: r.text("undo_json")?,
        summary: r.text("summary")?,
        created_by: r.text("created_by")?,
        created_at_ms: r.i64("created_at_ms")?,
        updated_at_ms: r.i64("updated_at_ms")?,
        finished_at_ms: r.opt_i64("finished_at_ms")?,
    })
}

const ROLLOUT_COLS: &str =
    "id, kind, state, target_json, action_json, stage_json, undo_json, summary, \
    created_by, created_at_ms, updated_at_ms, finished_at_ms";

impl Store {
    /// Makes the layer edits and records the rollout with its rigs (state `waiting`), in one
    /// transaction; what the edits replaced is kept with the rollout, as stored (pool passwords
    /// sealed), for [`Store::undo_rollout_layers`]. Returns the rollout's id.
    pub async fn commit_rollout(
        &self,
        edits: &LayerEdits,
        new: &NewRollout<'_>,
    ) -> Result<i64, StoreError> {
        let profiles: Vec<(i64, String)> = edits
            .profiles
            .iter()
            .map(|(id, l)| Ok((*id, self.seal_layer_json(l)?)))
            .collect::<Result<_, StoreError>>()?;
        let groups: Vec<(&GroupRow, String)> = edits
            .groups
            .iter()
            .map(|g| Ok((g, self.seal_layer_json(&g.overrides)?)))
            .collect::<Result<_, StoreError>>()?;
        let overrides: Vec<(i64, String)> = edits
            .rig_overrides
            .iter()
            .map(|(id, l)| Ok((*id, self.seal_layer_json(l)?)))
            .collect::<Result<_, StoreError>>()?;
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            let mut undo = Undo::default();
            for (id, _) in &profiles {
                let json: Option<String> = sqlx::query_scalar("SELECT config_json FROM profiles WHERE id = $1")
                    .bind(id).fetch_optional(&mut *tx).await?;
                undo.profiles.push((*id, json.ok_or(StoreError::NotFound)?));
            }
            for (g, _) in &groups {
                let row = sqlx::query("SELECT profile_id, overrides_json, description FROM groups WHERE name = $1")
                    .bind(&g.name).fetch_optional(&mut *tx).await?.ok_or(StoreError::NotFound)?;
                let algos: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT algorithm, profile_id FROM group_algorithm_profiles WHERE group_name = $1")
                    .bind(&g.name).fetch_all(&mut *tx).await?;
                undo.groups.push(UndoGroup {
                    name: g.name.clone(),
                    profile_id: row.opt_i64("profile_id")?,
                    overrides_json: row.text("overrides_json")?,
                    description: row.text("description")?,
                    algorithm_profiles: algos,
                });
            }
            for (rig_id, _) in &edits.rig_profiles {
                let v: Option<Option<i64>> = sqlx::query_scalar("SELECT profile_id FROM rigs WHERE id = $1")
                    .bind(rig_id).fetch_optional(&mut *tx).await?;
                undo.rig_profiles.push((*rig_id, v.ok_or(StoreError::NotFound)?));
            }
            for (rig_id, _) in &overrides {
                let v: Option<String> = sqlx::query_scalar("SELECT overrides_json FROM rigs WHERE id = $1")
                    .bind(rig_id).fetch_optional(&mut *tx).await?;
                undo.rig_overrides.push((*rig_id, v.ok_or(StoreError::NotFound)?));
            }
            let undo_json = serde_json::to_string(&undo)
                .map_err(|e| StoreError::Invalid(format!("undo json: {e}")))?;
            for (id, json) in &profiles {
                let n = sqlx::query("UPDATE profiles SET config_json = $2, updated_at_ms = $3, updated_by = $4 WHERE id = $1")
                    .bind(id).bind(json).bind(new.now_ms).bind(new.created_by)
                    .execute(&mut *tx).await?.rows_affected();
                if n == 0 {
                    return Err(StoreError::NotFound);
                }
            }
            for (g, json) in &groups {
                let n = sqlx::query("UPDATE groups SET profile_id = $2, overrides_json = $3, description = $4 WHERE name = $1")
                    .bind(&g.name).bind(g.profile_id).bind(json).bind(&g.description)
                    .execute(&mut *tx).await?.rows_affected();
                if n == 0 {
                    return Err(StoreError::NotFound);
                }
                sqlx::query("DELETE FROM group_algorithm_profiles WHERE group_name = $1")
                    .bind(&g.name).execute(&mut *tx).await?;
                for (algorithm, profile_id) in &g.algorithm_profiles {
                    sqlx::query("INSERT INTO group_algorithm_profiles (group_name, algorithm, profile_id) VALUES ($1, $2, $3)")
                        .bind(&g.name).bind(algorithm).bind(profile_id).execute(&mut *tx).await?;
                }
            }
            for (rig_id, profile_id) in &edits.rig_profiles {
                sqlx::query("UPDATE rigs SET profile_id = $2 WHERE id = $1")
                    .bind(rig_id).bind(profile_id).execute(&mut *tx).await?;
            }
            for (rig_id, json) in &overrides {
                sqlx::query("UPDATE rigs SET overrides_json = $2 WHERE id = $1")
                    .bind(rig_id).bind(json).execute(&mut *tx).await?;
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO rollouts (kind, state, target_json, action_json, stage_json, undo_json, summary, created_by, created_at_ms, updated_at_ms)
                 VALUES ($1, 'running', $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id",
            )
            .bind(new.kind).bind(new.target_json).bind(new.action_json).bind(new.stage_json)
            .bind(&undo_json).bind(new.summary).bind(new.created_by).bind(new.now_ms)
            .fetch_one(&mut *tx).await?;
            for (rig_id, wave, previous) in new.rigs {
                sqlx::query(
                    "INSERT INTO rollout_rigs (rollout_id, rig_id, wave, state, previous_version, updated_at_ms)
                     VALUES ($1, $2, $3, 'waiting', $4, $5)",
                )
                .bind(id).bind(rig_id).bind(wave).bind(to_i64(*previous, "version")?).bind(new.now_ms)
                .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(id)
        })
    }

    /// Puts back what the rollout's layer edits replaced (profiles, groups, rigs' profiles and
    /// overrides), in one transaction.
    pub async fn undo_rollout_layers(&self, id: i64, now_ms: i64) -> Result<(), StoreError> {
        let row = self.rollout(id).await?.ok_or(StoreError::NotFound)?;
        let undo: Undo = serde_json::from_str(&row.undo_json)
            .map_err(|e| StoreError::Corrupt(format!("rollout undo: {e}")))?;
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            for (pid, json) in &undo.profiles {
                sqlx::query("UPDATE profiles SET config_json = $2, updated_at_ms = $3 WHERE id = $1")
                    .bind(pid).bind(json).bind(now_ms).execute(&mut *tx).await?;
            }
            for g in &undo.groups {
                sqlx::query("UPDATE groups SET profile_id = $2, overrides_json = $3, description = $4 WHERE name = $1")
                    .bind(&g.name).bind(g.profile_id).bind(&g.overrides_json).bind(&g.description)
                    .execute(&mut *tx).await?;
                sqlx::query("DELETE FROM group_algorithm_profiles WHERE group_name = $1")
                    .bind(&g.name).execute(&mut *tx).await?;
                for (algorithm, pid) in &g.algorithm_profiles {
                    sqlx::query("INSERT INTO group_algorithm_profiles (group_name, algorithm, profile_id) VALUES ($1, $2, $3)")
                        .bind(&g.name).bind(algorithm).bind(pid).execute(&mut *tx).await?;
                }
            }
            for (rig, pid) in &undo.rig_profiles {
                sqlx::query("UPDATE rigs SET profile_id = $2 WHERE id = $1")
                    .bind(rig).bind(pid).execute(&mut *tx).await?;
            }
            for (rig, json) in &undo.rig_overrides {
                sqlx::query("UPDATE rigs SET overrides_json = $2 WHERE id = $1")
                    .bind(rig).bind(json).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// A rig's desired config of an earlier version, if still kept.
    pub async fn desired_config_version(
        &self,
        rig_id: i64,
        version: u64,
    ) -> Result<Option<rigfleet_proto::config::DesiredConfig>, StoreError> {
        let v = to_i64(version, "version")?;
        let json: Option<String> = dispatch!(self, p => sqlx::query_scalar(
            "SELECT config_json FROM desired_configs WHERE rig_id = $1 AND version = $2")
            .bind(rig_id).bind(v).fetch_optional(p).await?);
        json.map(|j| self.open_config_json(&j)).transpose()
    }

    /// Rollouts, newest first.
    pub async fn list_rollouts(&self, limit: i64) -> Result<Vec<RolloutRow>, StoreError> {
        let sql = format!("SELECT {ROLLOUT_COLS} FROM rollouts ORDER BY id DESC LIMIT $1");
        dispatch!(self, p => {
            let rows = sqlx::query(&sql).bind(limit.clamp(1, 1000)).fetch_all(p).await?;
            rows.iter().map(rollout_from).collect()
        })
    }

    /// Rollouts in a state.
    pub async fn rollouts_in_state(&self, state: &str) -> Result<Vec<RolloutRow>, StoreError> {
        let sql = format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE state = $1 ORDER BY id");
        dispatch!(self, p => {
            let rows = sqlx::query(&sql).bind(state).fetch_all(p).await?;
            rows.iter().map(rollout_from).collect()
        })
    }

    /// One rollout.
    pub async fn rollout(&self, id: i64) -> Result<Option<RolloutRow>, StoreError> {
        let sql = format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE id = $1");
        dispatch!(self, p => {
            let row = sqlx::query(&sql).bind(id).fetch_optional(p).await?;
            row.as_ref().map(rollout_from).transpose()
        })
    }

    /// The rollout's rigs, by wave and rig id.
    pub async fn rollout_rigs(&self, id: i64) -> Result<Vec<RolloutRigRow>, StoreError> {
        dispatch!(self, p => {
            let rows = sqlx::query(
                "SELECT x.rig_id, r.rig_uid, r.name, x.wave, x.state, x.previous_version, x.target_version,
                        x.target_hash, x.error, x.updated_at_ms
                 FROM rollout_rigs x JOIN rigs r ON r.id = x.rig_id
                 WHERE x.rollout_id = $1 ORDER BY x.wave, x.rig_id",
            )
            .bind(id).fetch_all(p).await?;
            rows.iter().map(|r| Ok(RolloutRigRow {
                rig_id: r.i64("rig_id")?,
                rig_uid: r.text("rig_uid")?,
                rig_name: r.text("name")?,
                wave: r.i64("wave")?,
                state: r.text("state")?,
                previous_version: r.opt_i64("previous_version")?.map(|v| to_u64(v, "version")).transpose()?,
                target_version: r.opt_i64("target_version")?.map(|v| to_u64(v, "version")).transpose()?,
                target_hash: r.opt_text("target_hash")?,
                error: r.opt_text("error")?,
                updated_at_ms: r.i64("updated_at_ms")?,
            })).collect()
        })
    }

    /// Sets a rollout's state (and its finish time when it is final).
    pub async fn set_rollout_state(
        &self,
        id: i64,
        state: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let finished = matches!(state, "completed" | "rolled_back").then_some(now_ms);
        let n = dispatch!(self, p => sqlx::query(
            "UPDATE rollouts SET state = $2, updated_at_ms = $3, finished_at_ms = $4 WHERE id = $1")
            .bind(id).bind(state).bind(now_ms).bind(finished).execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Sets the state of some of a rollout's rigs (e.g. `sent` once pushed).
    pub async fn set_rollout_rig_states(
        &self,
        id: i64,
        rigs: &[i64],
        state: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            for rig in rigs {
                sqlx::query("UPDATE rollout_rigs SET state = $3, updated_at_ms = $4 WHERE rollout_id = $1 AND rig_id = $2")
                    .bind(id).bind(rig).bind(state).bind(now_ms).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}

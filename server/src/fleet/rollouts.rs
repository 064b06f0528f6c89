//! Rollouts: one action changes the desired config of a target of rigs (a selection, a group,
//! a tag, a filter of the fleet list, or everything) and the server follows every rig until it
//! applied the new version, failed (keeping its old config), or was superseded. Rigs that are
//! offline get theirs when they reconnect (the hub reconciles by version on `hello`). A staged
//! rollout releases its first wave, waits until those rigs applied and ran for a while, then
//! releases the rest; it halts itself after too many failures and can be resumed or rolled back.

use std::collections::{HashMap, HashSet};

use rigfleet_proto::RigId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::actor::{Actor, Permission};
use super::error::{FieldErrors, FleetError};
use super::layers::{build_rig, ConfigLayer};
use crate::app::AppState;
use crate::db::{LayerEdits, LayerSnapshot, NewRollout, RigLayers, RolloutRigRow, RolloutRow};

/// Which rigs a rollout or a command batch reaches.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Target {
    /// `"all"`: the whole fleet.
    All(AllRigs),
    /// `{"rigs": ["rig-…", …]}`.
    Rigs {
        /// Rig ids.
        rigs: Vec<String>,
    },
    /// `{"group": "hall-b"}`.
    Group {
        /// Group name.
        group: String,
    },
    /// `{"tag": "s19"}`.
    Tag {
        /// Tag.
        tag: String,
    },
    /// `{"filter": {…}}`: the query fields of `GET /api/v1/rigs` (q, group, tag, status).
    Filter {
        /// The fleet list's filter.
        #[schema(value_type = Object)]
        filter: FilterFields,
    },
}

/// The literal `"all"`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AllRigs {
    /// Every rig.
    All,
}

/// The filter fields of the fleet list.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterFields {
    /// Text in the name, id, group, tags or pool.
    #[serde(default)]
    pub q: Option<String>,
    /// Exact group.
    #[serde(default)]
    pub group: Option<String>,
    /// Has this tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// online, warning or offline.
    #[serde(default)]
    pub status: Option<String>,
}

/// A pool replaced wherever it appears (profiles, group and rig overrides).
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplacePool {
    /// Pools with this URL…
    pub from_url: String,
    /// …get this URL (unchanged when absent).
    #[serde(default)]
    pub to_url: Option<String>,
    /// …and this user/wallet (unchanged when absent; `{rig}`/`{group}` allowed).
    #[serde(default)]
    pub to_user: Option<String>,
    /// …and this password (unchanged when absent).
    #[serde(default)]
    pub to_password: Option<String>,
}

/// How a rollout is staged.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Rigs in the first wave (at least 1).
    #[serde(default)]
    pub first_rigs: Option<usize>,
    /// Or a share of the target in the first wave (1–100).
    #[serde(default)]
    pub first_percent: Option<u32>,
    /// Seconds the first wave must run on the new config before the rest follows.
    #[serde(default)]
    pub wait_secs: u64,
    /// Failures after which the rollout halts itself (0: never).
    #[serde(default)]
    pub max_failures: usize,
}

/// `POST /api/v1/rollouts`: a target and exactly one action.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// Which rigs.
    pub target: Target,
    /// Apply this profile (to the group when the target is a group, else to each rig).
    #[serde(default)]
    pub profile: Option<String>,
    /// Replace a pool wherever the target's rigs get it from.
    #[serde(default)]
    pub replace_pool: Option<ReplacePool>,
    /// Switch to the group's profile for this algorithm.
    #[serde(default)]
    pub switch_algorithm: Option<String>,
    /// Merge these fields into each target rig's own overrides.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub config: Option<ConfigLayer>,
    /// Stage the rollout.
    #[serde(default)]
    pub stage: Option<Stage>,
    /// Apply to the rigs that can mine the algorithm and leave the others out, instead of
    /// refusing the rollout.
    #[serde(default)]
    pub skip_incapable: bool,
}

/// A rollout with its counts.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RolloutView {
    /// Id.
    pub id: i64,
    /// `config`.
    pub kind: String,
    /// running, halted, completed, rolled_back.
    pub state: String,
    /// What it does, for people.
    pub summary: String,
    /// Who started it.
    pub created_by: String,
    /// When (Unix ms).
    pub created_at_ms: i64,
    /// When it ended (Unix ms).
    pub finished_at_ms: Option<i64>,
    /// Rigs per state (waiting, pending, sent, applied, failed, superseded, rolled_back).
    pub counts: HashMap<String, usize>,
    /// Rigs in the rollout.
    pub total: usize,
    /// The stage plan.
    pub stage: Option<Stage>,
    /// Per rig (only in the detail).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rigs: Vec<RolloutRigView>,
}

/// One rig of a rollout.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RolloutRigView {
    /// Rig id.
    pub rig: String,
    /// Its name.
    pub name: String,
    /// Wave (0 first).
    pub wave: i64,
    /// Its state.
    pub state: String,
    /// Version before.
    pub previous_version: Option<u64>,
    /// Version the rollout gave it.
    pub target_version: Option<u64>,
    /// The agent's error when it failed.
    pub error: Option<String>,
}

fn view(row: &RolloutRow, rigs: &[RolloutRigRow], detail: bool) -> RolloutView {
    let mut counts = HashMap::new();
    for r in rigs {
        *counts.entry(r.state.clone()).or_insert(0) += 1;
    }
    RolloutView {
        id: row.id,
        kind: row.kind.clone(),
        state: row.state.clone(),
        summary: row.summary.clone(),
        created_by: row.created_by.clone(),
        created_at_ms: row.created_at_ms,
        finished_at_ms: row.finished_at_ms,
        counts,
        total: rigs.len(),
        stage: row
            .stage_json
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok()),
        rigs: if detail {
            rigs.iter()
                .map(|r| RolloutRigView {
                    rig: r.rig_uid.clone(),
                    name: r.rig_name.clone(),
                    wave: r.wave,
                    state: r.state.clone(),
                    previous_version: r.previous_version,
                    target_version: r.target_version,
                    error: r.error.clone(),
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// The rigs a target names (database ids), or an error naming what does not exist.
pub fn resolve_target(
    state: &AppState,
    actor: &Actor,
    target: &Target,
) -> Result<Vec<i64>, FleetError> {
    let mut ids: Vec<i64> = match target {
        Target::All(_) => state.hub.live.with_all(|all| all.keys().copied().collect()),
        Target::Group { group } => state.hub.live.with_all(|all| {
            all.values()
                .filter(|r| r.group.as_deref() == Some(group.as_str()))
                .map(|r| r.id)
                .collect()
        }),
        Target::Tag { tag } => state.hub.live.with_all(|all| {
            all.values()
                .filter(|r| r.tags.iter().any(|t| t == tag))
                .map(|r| r.id)
                .collect()
        }),
        Target::Rigs { rigs } => {
            let by_uid: HashMap<String, i64> = state
                .hub
                .live
                .with_all(|all| all.values().map(|r| (r.uid.0.clone(), r.id)).collect());
            let mut out = Vec::new();
            let mut missing = Vec::new();
            for uid in rigs {
                match by_uid.get(uid) {
                    Some(id) => out.push(*id),
                    None => missing.push(uid.clone()),
                }
            }
            if !missing.is_empty() {
                return Err(FleetError::field(
                    "invalid_target",
                    "target.rigs",
                    format!("no such rig: {}", missing.join(", ")),
                ));
            }
            out
        }
        Target::Filter { filter } => {
            let q = super::rigs::RigQuery {
                q: filter.q.clone(),
                group: filter.group.clone(),
                tag: filter.tag.clone(),
                status: filter.status.clone(),
                ..Default::default()
            };
            let uids: HashSet<String> = super::rigs::matching(state, actor, &q)?
                .into_iter()
                .map(|r| r.id)
                .collect();
            state.hub.live.with_all(|all| {
                all.values()
                    .filter(|r| uids.contains(r.uid.as_str()))
                    .map(|r| r.id)
                    .collect()
            })
        }
    };
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Err(FleetError::field(
            "invalid_target",
            "target",
            "the target matches no rig",
        ));
    }
    Ok(ids)
}

fn replace_in(layer: &mut ConfigLayer, r: &ReplacePool) -> bool {
    let mut changed = false;
    for p in layer.pools.iter_mut().flatten() {
        if p.url == r.from_url {
            if let Some(u) = &r.to_url {
                p.url = u.clone();
            }
            if let Some(u) = &r.to_user {
                p.user = u.clone();
            }
            if let Some(pw) = &r.to_password {
                p.password = pw.clone();
            }
            changed = true;
        }
    }
    changed
}

/// What a request changes in the layers, and which rigs it may touch.
struct Plan {
    edits: LayerEdits,
    /// The snapshot with the edits made.
    after: LayerSnapshot,
    /// Rigs whose config may change.
    scope: Vec<i64>,
    summary: String,
    /// The algorithm the targets must be able to mine, when the action sets one.
    algorithm: Option<String>,
}

fn plan(req: &RolloutRequest, snap: &LayerSnapshot, targets: &[i64]) -> Result<Plan, FleetError> {
    let actions = [
        req.profile.is_some(),
        req.replace_pool.is_some(),
        req.switch_algorithm.is_some(),
        req.config.is_some(),
    ]
    .iter()
    .filter(|a| **a)
    .count();
    if actions != 1 {
        return Err(FleetError::BadRequest(
            "give exactly one of profile, replace_pool, switch_algorithm, config".into(),
        ));
    }
    let mut after = snap.clone();
    let mut edits = LayerEdits::default();
    let target_set: HashSet<i64> = targets.iter().copied().collect();
    let profile_id = |name: &str| -> Result<i64, FleetError> {
        snap.profiles
            .values()
            .find(|p| p.name == name)
            .map(|p| p.id)
            .ok_or_else(|| {
                FleetError::field("invalid_rollout", "profile", format!("no profile {name}"))
            })
    };
    let group_target = match &req.target {
        Target::Group { group } => Some(group.clone()),
        _ => None,
    };
    let mut scope: Vec<i64> = targets.to_vec();
    let summary;
    let mut algorithm = None;
    let assign = |after: &mut LayerSnapshot, edits: &mut LayerEdits, pid: i64| {
        clear_mining(after, edits, &target_set, group_target.as_deref());
        if let Some(g) = group_target.as_ref().and_then(|g| after.groups.get_mut(g)) {
            g.profile_id = Some(pid);
            edits.groups.retain(|x| x.name != g.name);
            edits.groups.push(g.clone());
            for r in after
                .rigs
                .iter_mut()
                .filter(|r| target_set.contains(&r.rig_id))
            {
                if r.profile_id.is_some() {
                    r.profile_id = None;
                    edits.rig_profiles.push((r.rig_id, None));
                }
            }
        } else {
            for r in after
                .rigs
                .iter_mut()
                .filter(|r| target_set.contains(&r.rig_id))
            {
                r.profile_id = Some(pid);
                edits.rig_profiles.push((r.rig_id, Some(pid)));
            }
        }
    };
    if let Some(name) = &req.profile {
        let pid = profile_id(name)?;
        algorithm = snap.profiles[&pid].layer.algorithm.clone();
        assign(&mut after, &mut edits, pid);
        summary = format!("apply profile {name}");
    } else if let Some(algo) = &req.switch_algorithm {
        // Every target rig's group must name a profile for the algorithm; a group target
        // switches the group itself.
        let mut missing = Vec::new();
        let mut per_rig: Vec<(i64, i64)> = Vec::new();
        for r in after.rigs.iter().filter(|r| target_set.contains(&r.rig_id)) {
            match r
                .group
                .as_ref()
                .and_then(|g| snap.groups.get(g))
                .and_then(|g| g.algorithm_profiles.get(algo))
            {
                Some(pid) => per_rig.push((r.rig_id, *pid)),
                None => missing.push(r.name.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(FleetError::field(
                "invalid_rollout",
                "switch_algorithm",
                format!(
                    "no profile for {algo} in the group of: {}",
                    missing.join(", ")
                ),
            ));
        }
        clear_mining(&mut after, &mut edits, &target_set, group_target.as_deref());
        if let Some(g) = group_target.as_ref().and_then(|g| after.groups.get_mut(g)) {
            let pid = per_rig.first().map(|(_, p)| *p);
            g.profile_id = pid;
            edits.groups.retain(|x| x.name != g.name);
            edits.groups.push(g.clone());
            for r in after
                .rigs
                .iter_mut()
                .filter(|r| target_set.contains(&r.rig_id))
            {
                if r.profile_id.is_some() {
                    r.profile_id = None;
                    edits.rig_profiles.push((r.rig_id, None));
                }
            }
        } else {
            for (rig, pid) in &per_rig {
                if let Some(r) = after.rigs.iter_mut().find(|r| r.rig_id == *rig) {
                    r.profile_id = Some(*pid);
                    edits.rig_profiles.push((*rig, Some(*pid)));
                }
            }
        }
        algorithm = Some(algo.clone());
        summary = format!("switch to {algo}");
    } else if let Some(layer) = &req.config {
        for r in after
            .rigs
            .iter_mut()
            .filter(|r| target_set.contains(&r.rig_id))
        {
            r.overrides = r.overrides.merged(layer);
            edits.rig_overrides.push((r.rig_id, r.overrides.clone()));
        }
        algorithm = layer.algorithm.clone();
        summary = "set rig overrides".to_string();
    } else if let Some(rep) = &req.replace_pool {
        // The layers the target's rigs get this pool from are edited; every rig using one of
        // them is in scope.
        let mut profiles = HashSet::new();
        let mut groups = HashSet::new();
        for r in after.rigs.iter().filter(|r| target_set.contains(&r.rig_id)) {
            let g = r.group.as_ref().and_then(|g| snap.groups.get(g));
            if let Some(pid) = r.profile_id.or_else(|| g.and_then(|g| g.profile_id)) {
                profiles.insert(pid);
            }
            if let Some(g) = g {
                groups.insert(g.name.clone());
            }
        }
        for pid in profiles {
            if let Some(p) = after.profiles.get_mut(&pid) {
                if replace_in(&mut p.layer, rep) {
                    edits.profiles.push((pid, p.layer.clone()));
                }
            }
        }
        for name in groups {
            if let Some(g) = after.groups.get_mut(&name) {
                if replace_in(&mut g.overrides, rep) {
                    edits.groups.push(g.clone());
                }
            }
        }
        for r in after
            .rigs
            .iter_mut()
            .filter(|r| target_set.contains(&r.rig_id))
        {
            if replace_in(&mut r.overrides, rep) {
                edits.rig_overrides.push((r.rig_id, r.overrides.clone()));
            }
        }
        scope = after.rigs.iter().map(|r| r.rig_id).collect();
        summary = format!("replace pool {}", rep.from_url);
    } else {
        return Err(FleetError::BadRequest("no action".into()));
    }
    Ok(Plan {
        edits,
        after,
        scope,
        summary,
        algorithm,
    })
}

/// Applying a profile means mining what it says: the target rigs' own overrides (and a target
/// group's) lose their algorithm and pools; device settings and the telemetry interval stay.
fn clear_mining(
    after: &mut LayerSnapshot,
    edits: &mut LayerEdits,
    targets: &HashSet<i64>,
    group: Option<&str>,
) {
    for r in after
        .rigs
        .iter_mut()
        .filter(|r| targets.contains(&r.rig_id))
    {
        if r.overrides.algorithm.is_some() || r.overrides.pools.is_some() {
            r.overrides.algorithm = None;
            r.overrides.pools = None;
            edits.rig_overrides.push((r.rig_id, r.overrides.clone()));
        }
    }
    if let Some(g) = group.and_then(|g| after.groups.get_mut(g)) {
        if g.overrides.algorithm.is_some() || g.overrides.pools.is_some() {
            g.overrides.algorithm = None;
            g.overrides.pools = None;
            edits.groups.push(g.clone());
        }
    }
}

fn can_mine(rig: &RigLayers, algorithm: &str) -> bool {
    // A rig that has not listed its devices yet is given the benefit of the doubt: it reports
    // a failed apply if it cannot.
    rig.algorithms.is_empty() || rig.algorithms.iter().any(|a| a == algorithm)
}

/// Starts a rollout. Nothing is changed when it fails.
pub async fn create(
    state: &AppState,
    actor: &Actor,
    req: &RolloutRequest,
) -> Result<RolloutView, FleetError> {
    let touches_pools = req.profile.is_some()
        || req.replace_pool.is_some()
        || req.switch_algorithm.is_some()
        || req.config.as_ref().is_some_and(|c| c.pools.is_some());
    if touches_pools {
        actor.require(Permission::ChangePools)?;
        actor.require_fresh("a rollout that changes pools or wallets")?;
    } else {
        actor.require(Permission::Operate)?;
    }
    if let Some(layer) = &req.config {
        if let Some(pools) = &layer.pools {
            let mut fields = FieldErrors::new();
            for (i, p) in pools.iter().enumerate() {
                if let Err(e) = p.url.parse::<rigfleet_proto::pool_url::PoolUrl>() {
                    fields.insert(format!("config.pools[{i}].url"), e.to_string());
                }
            }
            FleetError::check("invalid_rollout", fields)?;
        }
    }
    if let Some(stage) = &req.stage {
        if stage.first_percent.is_some_and(|p| p == 0 || p > 100)
            || stage.first_rigs == Some(0)
            || (stage.first_percent.is_none() && stage.first_rigs.is_none())
        {
            return Err(FleetError::field(
                "invalid_rollout",
                "stage",
                "give first_rigs ≥ 1 or first_percent 1–100",
            ));
        }
    }
    let targets = resolve_target(state, actor, &req.target)?;
    let snap = state.hub.store.layer_snapshot(None).await?;
    let mut plan = plan(req, &snap, &targets)?;
    // Which rigs change, and can they mine what they are given?
    let mut changed: Vec<(i64, u64)> = Vec::new();
    let mut incapable = Vec::new();
    let mut problems = FieldErrors::new();
    let scope: HashSet<i64> = plan.scope.iter().copied().collect();
    for rig in plan.after.rigs.iter().filter(|r| scope.contains(&r.rig_id)) {
        let built = match build_rig(&plan.after, rig) {
            Ok(b) => b,
            Err(FleetError::Invalid { fields, .. }) => {
                for (k, v) in fields {
                    problems.insert(format!("{} {k}", rig.rig_uid), v);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(built) = built else { continue };
        if !can_mine(rig, &built.config.algorithm) {
            incapable.push(rig.rig_id);
            continue;
        }
        if rig.desired_hash.as_deref() != Some(built.config.content_hash().as_str()) {
            changed.push((rig.rig_id, rig.desired_version));
        }
    }
    FleetError::check("invalid_rollout", problems)?;
    if !incapable.is_empty() {
        let names: Vec<String> = plan
            .after
            .rigs
            .iter()
            .filter(|r| incapable.contains(&r.rig_id))
            .map(|r| r.rig_uid.clone())
            .collect();
        if !req.skip_incapable {
            return Err(FleetError::field(
                "invalid_rollout",
                "target",
                format!(
                    "{} rig(s) have no device that mines {}: {} (send skip_incapable to apply to the others)",
                    names.len(),
                    plan.algorithm.clone().unwrap_or_default(),
                    names.join(", ")
                ),
            ));
        }
        // Leave them out: their layer edits are dropped (a group-level edit cannot be split).
        if plan.edits.groups.iter().any(|_| true) || !plan.edits.profiles.is_empty() {
            return Err(FleetError::Conflict(format!(
                "the change is made on a group or profile, which {} also use; move them out first",
                names.join(", ")
            )));
        }
        plan.edits
            .rig_profiles
            .retain(|(id, _)| !incapable.contains(id));
        plan.edits
            .rig_overrides
            .retain(|(id, _)| !incapable.contains(id));
    }
    let first_wave = match &req.stage {
        None => changed.len(),
        Some(s) => s
            .first_rigs
            .unwrap_or_else(|| {
                let pct = s.first_percent.unwrap_or(100) as usize;
                (changed.len() * pct).div_ceil(100)
            })
            .clamp(1, changed.len().max(1)),
    };
    let rigs: Vec<(i64, i64, u64)> = changed
        .iter()
        .enumerate()
        .map(|(i, (id, v))| (*id, i64::from(i >= first_wave), *v))
        .collect();
    let target_json = serde_json::to_string(&req.target).unwrap_or_default();
    let action = serde_json::json!({
        "profile": req.profile,
        "switch_algorithm": req.switch_algorithm,
        "replace_pool": req.replace_pool.as_ref().map(|r| serde_json::json!({
            "from_url": r.from_url, "to_url": r.to_url, "to_user": r.to_user,
            "to_password": r.to_password.as_ref().map(|_| "(set)"),
        })),
        "config": req.config.as_ref().map(|c| format!("{c:?}")),
    })
    .to_string();
    let stage_json = req
        .stage
        .as_ref()
        .and_then(|s| serde_json::to_string(s).ok());
    let summary = format!("{} on {} rig(s)", plan.summary, changed.len());
    let now = crate::now_ms();
    let created_by = actor.audit_name();
    let id = state
        .hub
        .store
        .commit_rollout(
            &plan.edits,
            &NewRollout {
                kind: "config",
                target_json: &target_json,
                action_json: &action,
                stage_json: stage_json.as_deref(),
                summary: &summary,
                created_by: &created_by,
                now_ms: now,
                rigs: &rigs,
            },
        )
        .await?;
    state
        .hub
        .store
        .audit(
            &created_by,
            "rollout.create",
            &format!("rollout:{id}"),
            &format!("{summary}; action {action}"),
        )
        .await;
    release_wave(state, id, 0).await?;
    if changed.is_empty() {
        state
            .hub
            .store
            .set_rollout_state(id, "completed", now)
            .await?;
    }
    get(state, actor, id).await
}

/// Builds, stores and pushes the configs of the rollout's rigs in `wave` that have none yet.
async fn release_wave(state: &AppState, id: i64, wave: i64) -> Result<usize, FleetError> {
    let rows = state.hub.store.rollout_rigs(id).await?;
    let due: Vec<i64> = rows
        .iter()
        .filter(|r| r.wave <= wave && r.state == "waiting")
        .map(|r| r.rig_id)
        .collect();
    if due.is_empty() {
        return Ok(0);
    }
    let snap = state.hub.store.layer_snapshot(Some(&due)).await?;
    let mut items = Vec::with_capacity(due.len());
    for rig in &snap.rigs {
        if let Some(built) = build_rig(&snap, rig)? {
            items.push((rig.rig_id, built.config));
        }
    }
    let by = format!("rollout:{id}");
    let stored = state
        .hub
        .store
        .store_desired_batch(&items, Some(&by), Some(id), crate::now_ms())
        .await?;
    let uids: HashMap<i64, String> = snap
        .rigs
        .iter()
        .map(|r| (r.rig_id, r.rig_uid.clone()))
        .collect();
    let rows: Vec<(i64, RigId, crate::db::DesiredRow)> = stored
        .into_iter()
        .filter_map(|(rig, row)| Some((rig, RigId(uids.get(&rig)?.clone()), row)))
        .collect();
    let sent = state
        .hub
        .push_configs(&rows)
        .await
        .map_err(|e| FleetError::Unavailable(e.to_string()))?;
    let sent: Vec<i64> = sent.into_iter().collect();
    state
        .hub
        .store
        .set_rollout_rig_states(id, &sent, "sent", crate::now_ms())
        .await?;
    Ok(rows.len())
}

/// Rollouts, newest first.
pub async fn list(state: &AppState, actor: &Actor) -> Result<Vec<RolloutView>, FleetError> {
    actor.require(Permission::View)?;
    let rows = state.hub.store.list_rollouts(100).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let rigs = state.hub.store.rollout_rigs(r.id).await?;
        out.push(view(r, &rigs, false));
    }
    Ok(out)
}

/// One rollout with its rigs.
pub async fn get(state: &AppState, actor: &Actor, id: i64) -> Result<RolloutView, FleetError> {
    actor.require(Permission::View)?;
    let row = state
        .hub
        .store
        .rollout(id)
        .await?
        .ok_or_else(|| FleetError::not_found("rollout"))?;
    let rigs = state.hub.store.rollout_rigs(id).await?;
    Ok(view(&row, &rigs, true))
}

/// Halts a running rollout (rigs already sent keep what they got; no new wave is released).
pub async fn halt(state: &AppState, actor: &Actor, id: i64) -> Result<RolloutView, FleetError> {
    set_state(state, actor, id, &["running"], "halted", "rollout.halt").await
}

/// Resumes a halted rollout.
pub async fn resume(state: &AppState, actor: &Actor, id: i64) -> Result<RolloutView, FleetError> {
    set_state(state, actor, id, &["halted"], "running", "rollout.resume").await
}

async fn set_state(
    state: &AppState,
    actor: &Actor,
    id: i64,
    from: &[&str],
    to: &str,
    action: &str,
) -> Result<RolloutView, FleetError> {
    actor.require(Permission::Operate)?;
    let row = state
        .hub
        .store
        .rollout(id)
        .await?
        .ok_or_else(|| FleetError::not_found("rollout"))?;
    if !from.contains(&row.state.as_str()) {
        return Err(FleetError::Conflict(format!(
            "rollout {id} is {}, not {}",
            row.state,
            from.join(" or ")
        )));
    }
    state
        .hub
        .store
        .set_rollout_state(id, to, crate::now_ms())
        .await?;
    state
        .hub
        .store
        .audit(
            &actor.audit_name(),
            action,
            &format!("rollout:{id}"),
            &format!("{} → {to}", row.state),
        )
        .await;
    get(state, actor, id).await
}

/// Rolls a rollout back: its layer edits are undone and every rig it reached gets its previous
/// config again (as a new version).
pub async fn rollback(state: &AppState, actor: &Actor, id: i64) -> Result<RolloutView, FleetError> {
    actor.require(Permission::ChangePools)?;
    actor.require_fresh("rolling back a rollout")?;
    let row = state
        .hub
        .store
        .rollout(id)
        .await?
        .ok_or_else(|| FleetError::not_found("rollout"))?;
    if row.state == "rolled_back" {
        return Err(FleetError::Conflict(format!(
            "rollout {id} is already rolled back"
        )));
    }
    let now = crate::now_ms();
    state.hub.store.set_rollout_state(id, "halted", now).await?;
    state.hub.store.undo_rollout_layers(id, now).await?;
    let rigs = state.hub.store.rollout_rigs(id).await?;
    let mut items = Vec::new();
    let mut reached = Vec::new();
    for r in rigs.iter().filter(|r| r.target_version.is_some()) {
        reached.push(r.rig_id);
        let Some(prev) = r.previous_version.filter(|v| *v > 0) else {
            continue;
        };
        if let Some(config) = state
            .hub
            .store
            .desired_config_version(r.rig_id, prev)
            .await?
        {
            items.push((r.rig_id, config));
        }
    }
    let by = format!("rollback:{id}");
    let stored = state
        .hub
        .store
        .store_desired_batch(&items, Some(&by), None, now)
        .await?;
    let uids: HashMap<i64, String> = rigs.iter().map(|r| (r.rig_id, r.rig_uid.clone())).collect();
    let rows: Vec<(i64, RigId, crate::db::DesiredRow)> = stored
        .into_iter()
        .filter_map(|(rig, row)| Some((rig, RigId(uids.get(&rig)?.clone()), row)))
        .collect();
    state
        .hub
        .push_configs(&rows)
        .await
        .map_err(|e| FleetError::Unavailable(e.to_string()))?;
    let waiting: Vec<i64> = rigs.iter().map(|r| r.rig_id).collect();
    state
        .hub
        .store
        .set_rollout_rig_states(id, &waiting, "rolled_back", now)
        .await?;
    state
        .hub
        .store
        .set_rollout_state(id, "rolled_back", now)
        .await?;
    state
        .hub
        .store
        .audit(
            &actor.audit_name(),
            "rollout.rollback",
            &format!("rollout:{id}"),
            &format!("{} rig(s) back on their previous config", rows.len()),
        )
        .await;
    let _ = reached;
    get(state, actor, id).await
}

/// One pass of the rollout driver: releases the next wave of staged rollouts whose first wave
/// applied and ran long enough, halts those with too many failures, and completes those with
/// nothing left to wait for.
pub async fn drive(state: &AppState) -> Result<(), FleetError> {
    let now = crate::now_ms();
    for row in state.hub.store.rollouts_in_state("running").await? {
        let rigs = state.hub.store.rollout_rigs(row.id).await?;
        let stage: Option<Stage> = row
            .stage_json
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok());
        let failed = rigs.iter().filter(|r| r.state == "failed").count();
        if let Some(s) = &stage {
            if s.max_failures > 0 && failed >= s.max_failures {
                state
                    .hub
                    .store
                    .set_rollout_state(row.id, "halted", now)
                    .await?;
                state
                    .hub
                    .store
                    .audit(
                        "system:rollouts",
                        "rollout.halt",
                        &format!("rollout:{}", row.id),
                        &format!(
                            "{failed} failure(s) reached the limit of {}",
                            s.max_failures
                        ),
                    )
                    .await;
                continue;
            }
        }
        // Rows whose config was never stored (a crash between commit and release) are released
        // with their wave.
        let waiting_first = rigs.iter().any(|r| r.wave == 0 && r.state == "waiting");
        if waiting_first {
            release_wave(state, row.id, 0).await?;
            continue;
        }
        let first_done = rigs
            .iter()
            .filter(|r| r.wave == 0)
            .all(|r| matches!(r.state.as_str(), "applied" | "superseded"));
        let last_applied = rigs
            .iter()
            .filter(|r| r.wave == 0)
            .map(|r| r.updated_at_ms)
            .max()
            .unwrap_or(0);
        let wait_ms = stage.as_ref().map_or(0, |s| s.wait_secs as i64 * 1000);
        if rigs.iter().any(|r| r.state == "waiting") && first_done && now - last_applied >= wait_ms
        {
            release_wave(state, row.id, i64::MAX).await?;
            continue;
        }
        let open = rigs
            .iter()
            .any(|r| matches!(r.state.as_str(), "waiting" | "pending" | "sent"));
        if !open {
            state
                .hub
                .store
                .set_rollout_state(row.id, "completed", now)
                .await?;
        }
    }
    Ok(())
}

/// Runs [`drive`] every second until the state is dropped.
pub fn spawn_driver(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = drive(&state).await {
                tracing::warn!(%error, "Rollout driver pass failed");
            }
        }
    })
}

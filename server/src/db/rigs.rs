//! Agents, the rigs they front, tags, groups and devices.

use std::collections::HashMap;

use rigfleet_proto::agent_to_server::DeviceDescriptor;

use super::row::{bind_args, Arg, RowExt};
use super::{
    dispatch, to_u64, AgentRow, DeviceRow, NewAgent, NewRig, Page, RigFilter, RigRow, Store,
    StoreError, WriteBegin, RIG_SORT_COLUMNS,
};

const RIG_COLS: &str = "r.id, r.rig_uid, r.agent_id, r.name, r.group_name, r.pending_approval, \
    r.flagged, r.created_at_ms, r.last_seen_ms, r.last_seq, r.order_counter, r.desired_version, \
    r.applied_version, r.applied_hash, r.applied_ok, r.applied_error, r.applied_at_ms";

const DEVICE_COLS: &str =
    "id, rig_id, device_uid, slot, kind, model, algorithms, first_seen_ms, last_seen_ms";

/// Taken before assigning slots: on PostgreSQL two transactions adding devices to one rig
/// would otherwise compute the same next slot (SQLite serialises writers anyway).
pub(crate) const LOCK_RIG_SQL: &str = "UPDATE rigs SET order_counter = order_counter WHERE id = $1";

/// Inserts a device with the next free slot of its rig, or refreshes it. Slots are never
/// reassigned, so history keeps pointing at the right device.
pub(crate) const UPSERT_DEVICE_SQL: &str =
    "INSERT INTO devices (rig_id, device_uid, slot, kind, model, algorithms, first_seen_ms, last_seen_ms)
     VALUES ($1, $2, (SELECT COALESCE(MAX(slot) + 1, 0) FROM devices WHERE rig_id = $1), $3, $4, $5, $6, $6)
     ON CONFLICT (rig_id, device_uid) DO UPDATE SET
       kind = CASE WHEN excluded.kind = '' THEN devices.kind ELSE excluded.kind END,
       model = CASE WHEN excluded.model = '' THEN devices.model ELSE excluded.model END,
       algorithms = CASE WHEN excluded.algorithms = '' THEN devices.algorithms ELSE excluded.algorithms END,
       last_seen_ms = excluded.last_seen_ms
     RETURNING slot";

fn rig_from(r: &impl RowExt) -> Result<RigRow, StoreError> {
    let opt_u64 = |col: &str| -> Result<Option<u64>, StoreError> {
        r.opt_i64(col)?.map(|v| to_u64(v, col)).transpose()
    };
    Ok(RigRow {
        id: r.i64("id")?,
        rig_uid: r.text("rig_uid")?,
        agent_id: r.i64("agent_id")?,
        name: r.text("name")?,
        group: r.opt_text("group_name")?,
        tags: Vec::new(),
        pending_approval: r.flag("pending_approval")?,
        flagged: r.opt_text("flagged")?,
        created_at_ms: r.i64("created_at_ms")?,
        last_seen_ms: r.opt_i64("last_seen_ms")?,
        last_seq: opt_u64("last_seq")?,
        order_counter: to_u64(r.i64("order_counter")?, "order_counter")?,
        desired_version: to_u64(r.i64("desired_version")?, "desired_version")?,
        applied_version: opt_u64("applied_version")?,
        applied_hash: r.opt_text("applied_hash")?,
        applied_ok: r.opt_flag("applied_ok")?,
        applied_error: r.opt_text("applied_error")?,
        applied_at_ms: r.opt_i64("applied_at_ms")?,
    })
}

fn device_from(r: &impl RowExt) -> Result<DeviceRow, StoreError> {
    let algorithms = r.text("algorithms")?;
    Ok(DeviceRow {
        id: r.i64("id")?,
        rig_id: r.i64("rig_id")?,
        device_uid: r.text("device_uid")?,
        slot: r.i16("slot")?,
        kind: r.text("kind")?,
        model: r.text("model")?,
        algorithms: algorithms
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect(),
        first_seen_ms: r.i64("first_seen_ms")?,
        last_seen_ms: r.i64("last_seen_ms")?,
    })
}

/// Maps a user-given sort key to a column; anything else is refused, so user text never
/// reaches the SQL.
fn sort_column(key: Option<&str>) -> Result<&'static str, StoreError> {
    Ok(match key.unwrap_or("name") {
        "id" => "r.id",
        "name" => "r.name",
        "rig_uid" => "r.rig_uid",
        "group" => "r.group_name",
        "created_at" => "r.created_at_ms",
        "last_seen" => "r.last_seen_ms",
        other => {
            return Err(StoreError::Invalid(format!(
                "sort by {:?}: expected one of {}",
                other.chars().take(32).collect::<String>(),
                RIG_SORT_COLUMNS.join(", ")
            )))
        }
    })
}

/// `LIKE` pattern for a substring, with the wildcards in user text escaped.
fn like_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

impl Store {
    /// One transaction: the agent row and its rigs (with devices). Err(StoreError::Conflict)
    /// when the public key is already registered.
    pub async fn register_agent(
        &self,
        agent: &NewAgent,
        rigs: &[NewRig],
    ) -> Result<Vec<RigRow>, StoreError> {
        let mut ids = Vec::with_capacity(rigs.len());
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            let agent_id: i64 = sqlx::query_scalar(
                "INSERT INTO agents (agent_uid, public_key, hostname, agent_version, enroll_token_id, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(&agent.agent_uid).bind(agent.public_key_hex.to_ascii_lowercase()).bind(&agent.hostname)
            .bind(&agent.agent_version).bind(&agent.enroll_token_id).bind(agent.now_ms)
            .fetch_one(&mut *tx).await
            .map_err(|e| StoreError::conflict_on_unique(e, "agent key or id already registered"))?;
            for rig in rigs {
                if let Some(g) = &rig.group {
                    sqlx::query("INSERT INTO groups (name, created_at_ms) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                        .bind(g).bind(agent.now_ms).execute(&mut *tx).await?;
                }
                let rig_id: i64 = sqlx::query_scalar(
                    "INSERT INTO rigs (rig_uid, agent_id, name, group_name, pending_approval, created_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                )
                .bind(&rig.rig_uid).bind(agent_id).bind(&rig.name).bind(&rig.group)
                .bind(rig.pending_approval).bind(agent.now_ms)
                .fetch_one(&mut *tx).await
                .map_err(|e| StoreError::conflict_on_unique(e, "rig id already registered"))?;
                for d in &rig.devices {
                    sqlx::query(UPSERT_DEVICE_SQL)
                        .bind(rig_id).bind(d.device_id.as_str()).bind(&d.kind).bind(&d.model)
                        .bind(d.algorithms.join(",")).bind(agent.now_ms)
                        .fetch_one(&mut *tx).await?;
                }
                ids.push(rig_id);
            }
            tx.commit().await?;
        });
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.rig_by_id(id).await?.ok_or(StoreError::NotFound)?);
        }
        Ok(out)
    }

    /// An agent and its rigs.
    pub async fn agent_by_uid(&self, agent_uid: &str) -> Result<Option<AgentRow>, StoreError> {
        let agent = dispatch!(self, p => {
            let row = sqlx::query(
                "SELECT id, agent_uid, public_key, revoked, hostname, agent_version FROM agents WHERE agent_uid = $1",
            )
            .bind(agent_uid).fetch_optional(p).await?;
            match row {
                None => None,
                Some(r) => Some(AgentRow {
                    id: r.i64("id")?,
                    agent_uid: r.text("agent_uid")?,
                    public_key_hex: r.text("public_key")?,
                    revoked: r.flag("revoked")?,
                    hostname: r.text("hostname")?,
                    agent_version: r.text("agent_version")?,
                    rigs: Vec::new(),
                }),
            }
        });
        let Some(mut agent) = agent else {
            return Ok(None);
        };
        let sql = format!("SELECT {RIG_COLS} FROM rigs r WHERE r.agent_id = $1 ORDER BY r.id");
        agent.rigs = dispatch!(self, p => {
            let rows = sqlx::query(&sql).bind(agent.id).fetch_all(p).await?;
            rows.iter().map(rig_from).collect::<Result<Vec<_>, _>>()?
        });
        self.fill_tags(&mut agent.rigs).await?;
        Ok(Some(agent))
    }

    /// Records an agent's connection.
    pub async fn record_agent_seen(
        &self,
        agent_id: i64,
        hostname: &str,
        agent_version: &str,
        pinned_server_key: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let n = dispatch!(self, p => sqlx::query(
            "UPDATE agents SET hostname = $2, agent_version = $3, pinned_server_key = $4, last_seen_ms = $5
             WHERE id = $1")
            .bind(agent_id).bind(hostname).bind(agent_version).bind(pinned_server_key).bind(now_ms)
            .execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Records that the agent now pins the server key with fingerprint `fingerprint`.
    pub async fn set_agent_pinned_key(
        &self,
        agent_id: i64,
        fingerprint: &str,
    ) -> Result<(), StoreError> {
        let n = dispatch!(self, p => sqlx::query(
            "UPDATE agents SET pinned_server_key = $2 WHERE id = $1")
            .bind(agent_id).bind(fingerprint)
            .execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Agents that are not revoked, counted by the server key they last pinned (`None`: not
    /// connected since that was recorded), most common first.
    pub async fn agents_by_pinned_key(&self) -> Result<Vec<(Option<String>, i64)>, StoreError> {
        let rows = dispatch!(self, p => {
            let rows = sqlx::query(
                "SELECT pinned_server_key, COUNT(*) AS n FROM agents WHERE NOT revoked
                 GROUP BY pinned_server_key ORDER BY n DESC, pinned_server_key")
                .fetch_all(p).await?;
            rows.iter()
                .map(|r| Ok((r.opt_text("pinned_server_key")?, r.i64("n")?)))
                .collect::<Result<Vec<_>, StoreError>>()?
        });
        Ok(rows)
    }

    async fn fill_tags(&self, rigs: &mut [RigRow]) -> Result<(), StoreError> {
        if rigs.is_empty() {
            return Ok(());
        }
        let placeholders: Vec<String> = (1..=rigs.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT rig_id, tag FROM rig_tags WHERE rig_id IN ({}) ORDER BY tag",
            placeholders.join(", ")
        );
        let args: Vec<Arg> = rigs.iter().map(|r| Arg::I64(r.id)).collect();
        let pairs: Vec<(i64, String)> = dispatch!(self, p => {
            let rows = bind_args!(sqlx::query(&sql), &args).fetch_all(p).await?;
            rows.iter().map(|r| Ok((r.i64("rig_id")?, r.text("tag")?))).collect::<Result<_, StoreError>>()?
        });
        let mut by_rig: HashMap<i64, Vec<String>> = HashMap::new();
        for (id, tag) in pairs {
            by_rig.entry(id).or_default().push(tag);
        }
        for r in rigs {
            r.tags = by_rig.remove(&r.id).unwrap_or_default();
        }
        Ok(())
    }

    /// Filtered, sorted, paginated rigs and the total count matching the filter.
    pub async fn list_rigs(&self, filter: &RigFilter) -> Result<Page<RigRow>, StoreError> {
        let column = sort_column(filter.sort.as_deref())?;
        let mut conds: Vec<String> = Vec::new();
        let mut args: Vec<Arg> = Vec::new();
        if let Some(text) = filter.text.as_deref().filter(|t| !t.is_empty()) {
            args.push(Arg::Text(like_pattern(text)));
            let n = args.len();
            conds.push(format!(
                "(LOWER(r.name) LIKE ${n} ESCAPE '\\' OR LOWER(r.rig_uid) LIKE ${n} ESCAPE '\\')"
            ));
        }
        if let Some(group) = &filter.group {
            args.push(Arg::Text(group.clone()));
            conds.push(format!("r.group_name = ${}", args.len()));
        }
        if let Some(tag) = &filter.tag {
            args.push(Arg::Text(tag.clone()));
            conds.push(format!(
                "EXISTS (SELECT 1 FROM rig_tags t WHERE t.rig_id = r.id AND t.tag = ${})",
                args.len()
            ));
        }
        let where_sql = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let dir = if filter.descending { "DESC" } else { "ASC" };
        let limit = if filter.limit <= 0 {
            100
        } else {
            filter.limit.min(1000)
        };
        let offset = filter.offset.max(0);
        // NULLs last on both databases (their defaults differ); id breaks ties so pages are stable.
        let sql = format!(
            "SELECT {RIG_COLS} FROM rigs r {where_sql}
             ORDER BY ({column} IS NULL), {column} {dir}, r.id {dir}
             LIMIT {limit} OFFSET {offset}"
        );
        let count_sql = format!("SELECT COUNT(*) FROM rigs r {where_sql}");
        let (mut items, total) = dispatch!(self, p => {
            let rows = bind_args!(sqlx::query(&sql), &args).fetch_all(p).await?;
            let items = rows.iter().map(rig_from).collect::<Result<Vec<_>, _>>()?;
            let total: i64 = bind_args!(sqlx::query_scalar(&count_sql), &args).fetch_one(p).await?;
            (items, total)
        });
        self.fill_tags(&mut items).await?;
        Ok(Page { items, total })
    }

    /// A rig by its public id.
    pub async fn rig_by_uid(&self, rig_uid: &str) -> Result<Option<RigRow>, StoreError> {
        let sql = format!("SELECT {RIG_COLS} FROM rigs r WHERE r.rig_uid = $1");
        let rig = dispatch!(self, p => {
            let row = sqlx::query(&sql).bind(rig_uid).fetch_optional(p).await?;
            row.as_ref().map(rig_from).transpose()?
        });
        self.with_tags(rig).await
    }

    /// A rig by its database id.
    pub async fn rig_by_id(&self, rig_id: i64) -> Result<Option<RigRow>, StoreError> {
        let sql = format!("SELECT {RIG_COLS} FROM rigs r WHERE r.id = $1");
        let rig = dispatch!(self, p => {
            let row = sqlx::query(&sql).bind(rig_id).fetch_optional(p).await?;
            row.as_ref().map(rig_from).transpose()?
        });
        self.with_tags(rig).await
    }

    async fn with_tags(&self, rig: Option<RigRow>) -> Result<Option<RigRow>, StoreError> {
        let Some(rig) = rig else { return Ok(None) };
        let mut one = [rig];
        self.fill_tags(&mut one).await?;
        let [rig] = one;
        Ok(Some(rig))
    }

    async fn update_rig(&self, sql: &str, rig_id: i64, arg: Option<Arg>) -> Result<(), StoreError> {
        let args: Vec<Arg> = arg.into_iter().collect();
        let n = dispatch!(self, p => bind_args!(sqlx::query(sql).bind(rig_id), &args).execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Renames a rig.
    pub async fn rename_rig(&self, rig_id: i64, name: &str) -> Result<(), StoreError> {
        self.update_rig(
            "UPDATE rigs SET name = $2 WHERE id = $1",
            rig_id,
            Some(Arg::Text(name.into())),
        )
        .await
    }

    /// Moves a rig to a group (created on first use), or out of any.
    pub async fn set_rig_group(&self, rig_id: i64, group: Option<&str>) -> Result<(), StoreError> {
        if let Some(g) = group {
            dispatch!(self, p => {
                sqlx::query("INSERT INTO groups (name, created_at_ms) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                    .bind(g).bind(0_i64).execute(p).await?;
            });
        }
        let n = dispatch!(self, p => sqlx::query("UPDATE rigs SET group_name = $2 WHERE id = $1")
            .bind(rig_id).bind(group).execute(p).await?.rows_affected());
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Every group name, sorted.
    pub async fn list_groups(&self) -> Result<Vec<String>, StoreError> {
        dispatch!(self, p => Ok(sqlx::query_scalar("SELECT name FROM groups ORDER BY name").fetch_all(p).await?))
    }

    /// Replaces a rig's tags.
    pub async fn set_rig_tags(&self, rig_id: i64, tags: &[String]) -> Result<(), StoreError> {
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            let n = sqlx::query("UPDATE rigs SET id = id WHERE id = $1").bind(rig_id).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            sqlx::query("DELETE FROM rig_tags WHERE rig_id = $1").bind(rig_id).execute(&mut *tx).await?;
            for tag in tags {
                sqlx::query("INSERT INTO rig_tags (rig_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(rig_id).bind(tag).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Lets a rig that waited for approval connect.
    pub async fn approve_rig(&self, rig_id: i64) -> Result<(), StoreError> {
        self.update_rig(
            "UPDATE rigs SET pending_approval = FALSE WHERE id = $1",
            rig_id,
            None,
        )
        .await
    }

    /// Flags a rig (for example a cloned identity) with a reason.
    pub async fn flag_rig(&self, rig_id: i64, reason: &str) -> Result<(), StoreError> {
        self.update_rig(
            "UPDATE rigs SET flagged = $2 WHERE id = $1",
            rig_id,
            Some(Arg::Text(reason.into())),
        )
        .await
    }

    /// Clears a rig's flag.
    pub async fn unflag_rig(&self, rig_id: i64) -> Result<(), StoreError> {
        self.update_rig("UPDATE rigs SET flagged = NULL WHERE id = $1", rig_id, None)
            .await
    }

    /// Deletes the rig (cascade); revokes the agent's key when it fronts no rig any more.
    pub async fn remove_rig(&self, rig_id: i64) -> Result<(), StoreError> {
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            let agent_id: Option<i64> = sqlx::query_scalar("DELETE FROM rigs WHERE id = $1 RETURNING agent_id")
                .bind(rig_id).fetch_optional(&mut *tx).await?;
            let Some(agent_id) = agent_id else { return Err(StoreError::NotFound) };
            sqlx::query(
                "UPDATE agents SET revoked = TRUE
                 WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM rigs WHERE agent_id = $1)",
            )
            .bind(agent_id).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Adds new devices (each gets the next free slot) and refreshes known ones.
    pub async fn upsert_devices(
        &self,
        rig_id: i64,
        devices: &[DeviceDescriptor],
        now_ms: i64,
    ) -> Result<Vec<DeviceRow>, StoreError> {
        dispatch!(self, p => {
            let mut tx = p.begin_with(p.write_begin()).await?;
            let n = sqlx::query(LOCK_RIG_SQL).bind(rig_id).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            for d in devices {
                sqlx::query(UPSERT_DEVICE_SQL)
                    .bind(rig_id).bind(d.device_id.as_str()).bind(&d.kind).bind(&d.model)
                    .bind(d.algorithms.join(",")).bind(now_ms)
                    .fetch_one(&mut *tx).await
                    .map_err(|e| match &e {
                        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
                        _ => StoreError::Database(e),
                    })?;
            }
            tx.commit().await?;
        });
        self.list_devices(rig_id).await
    }

    /// A rig's devices by slot.
    pub async fn list_devices(&self, rig_id: i64) -> Result<Vec<DeviceRow>, StoreError> {
        let sql = format!("SELECT {DEVICE_COLS} FROM devices WHERE rig_id = $1 ORDER BY slot");
        dispatch!(self, p => {
            let rows = sqlx::query(&sql).bind(rig_id).fetch_all(p).await?;
            rows.iter().map(device_from).collect()
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::test_db::test_backends;
    use super::*;

    pub(crate) fn device(id: &str) -> DeviceDescriptor {
        DeviceDescriptor {
            device_id: id.into(),
            kind: "gpu".into(),
            model: "RX 580".into(),
            algorithms: vec!["sha256d".into(), "scrypt".into()],
        }
    }

    pub(crate) fn new_agent(uid: &str, key: &str) -> NewAgent {
        NewAgent {
            agent_uid: uid.into(),
            public_key_hex: key.into(),
            hostname: "host".into(),
            agent_version: "0.1.0".into(),
            enroll_token_id: Some("t1".into()),
            now_ms: 1000,
        }
    }

    pub(crate) fn new_rig(uid: &str, devices: &[&str]) -> NewRig {
        NewRig {
            rig_uid: uid.into(),
            name: uid.into(),
            group: None,
            pending_approval: false,
            devices: devices.iter().map(|d| device(d)).collect(),
        }
    }

    /// Registers one agent with one rig of `n` devices (`dev0`…); returns the rig id.
    pub(crate) async fn one_rig(s: &Store, uid: &str, n: usize) -> i64 {
        let names: Vec<String> = (0..n).map(|i| format!("dev{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let key = format!(
            "{:0>64}",
            uid.bytes().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let rigs = s
            .register_agent(
                &new_agent(&format!("agent-{uid}"), &key),
                &[new_rig(uid, &refs)],
            )
            .await
            .unwrap();
        rigs[0].id
    }

    #[tokio::test]
    async fn register_agent_and_conflict_on_known_key() {
        for db in test_backends().await {
            let s = &db.store;
            let key = "ab".repeat(32);
            let mut gw = new_rig("rig-b", &["10.0.0.2"]);
            gw.group = Some("lan".into());
            gw.pending_approval = true;
            let rigs = s
                .register_agent(
                    &new_agent("agt-1", &key),
                    &[new_rig("rig-a", &["cpu", "0000:01:00.0"]), gw],
                )
                .await
                .unwrap();
            assert_eq!(rigs.len(), 2);
            assert_eq!(
                (rigs[1].group.as_deref(), rigs[1].pending_approval),
                (Some("lan"), true)
            );
            s.approve_rig(rigs[1].id).await.unwrap();
            assert!(
                !s.rig_by_id(rigs[1].id)
                    .await
                    .unwrap()
                    .unwrap()
                    .pending_approval
            );
            assert!(matches!(
                s.approve_rig(9999).await,
                Err(StoreError::NotFound)
            ));
            let devs = s.list_devices(rigs[0].id).await.unwrap();
            assert_eq!(
                devs.iter()
                    .map(|d| (d.device_uid.as_str(), d.slot))
                    .collect::<Vec<_>>(),
                [("cpu", 0), ("0000:01:00.0", 1)]
            );
            assert_eq!(devs[0].algorithms, ["sha256d", "scrypt"]);

            let again = s
                .register_agent(&new_agent("agt-2", &key), &[new_rig("rig-c", &[])])
                .await;
            assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
            // The failed registration left nothing behind.
            assert!(s.rig_by_uid("rig-c").await.unwrap().is_none());
            assert!(s.agent_by_uid("agt-2").await.unwrap().is_none());

            let a = s.agent_by_uid("agt-1").await.unwrap().unwrap();
            assert_eq!(
                (a.public_key_hex.as_str(), a.rigs.len(), a.revoked),
                (key.as_str(), 2, false)
            );
            assert_eq!(s.agents_by_pinned_key().await.unwrap(), [(None, 1)]);
            s.record_agent_seen(a.id, "new-host", "0.2.0", "sha256:old", 5000)
                .await
                .unwrap();
            let a = s.agent_by_uid("agt-1").await.unwrap().unwrap();
            assert_eq!(
                (a.hostname.as_str(), a.agent_version.as_str()),
                ("new-host", "0.2.0")
            );
            assert_eq!(
                s.agents_by_pinned_key().await.unwrap(),
                [(Some("sha256:old".to_string()), 1)]
            );
            s.set_agent_pinned_key(a.id, "sha256:new").await.unwrap();
            assert_eq!(
                s.agents_by_pinned_key().await.unwrap(),
                [(Some("sha256:new".to_string()), 1)]
            );
            assert!(matches!(
                s.record_agent_seen(9999, "h", "v", "sha256:x", 1).await,
                Err(StoreError::NotFound)
            ));
            assert!(matches!(
                s.set_agent_pinned_key(9999, "sha256:x").await,
                Err(StoreError::NotFound)
            ));
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn rig_edits_devices_and_removal() {
        for db in test_backends().await {
            let s = &db.store;
            let id = one_rig(s, "rig-x", 2).await;
            s.rename_rig(id, "Rig X").await.unwrap();
            s.set_rig_group(id, Some("north")).await.unwrap();
            s.set_rig_tags(id, &["b".into(), "a".into()]).await.unwrap();
            s.flag_rig(id, "cloned identity").await.unwrap();
            s.approve_rig(id).await.unwrap();
            let r = s.rig_by_uid("rig-x").await.unwrap().unwrap();
            assert_eq!(r.name, "Rig X");
            assert_eq!(r.group.as_deref(), Some("north"));
            assert_eq!(r.tags, ["a", "b"]);
            assert_eq!(r.flagged.as_deref(), Some("cloned identity"));
            assert_eq!(s.list_groups().await.unwrap(), ["north"]);
            s.unflag_rig(id).await.unwrap();
            s.set_rig_group(id, None).await.unwrap();
            let r = s.rig_by_id(id).await.unwrap().unwrap();
            assert_eq!((r.flagged, r.group), (None, None));
            assert!(matches!(
                s.rename_rig(9999, "x").await,
                Err(StoreError::NotFound)
            ));
            assert!(matches!(
                s.set_rig_tags(9999, &[]).await,
                Err(StoreError::NotFound)
            ));

            // New devices get the next slots; known ones keep theirs whatever the order.
            let devs = s
                .upsert_devices(id, &[device("new"), device("dev1"), device("dev0")], 7)
                .await
                .unwrap();
            let slots: Vec<(&str, i16)> = devs
                .iter()
                .map(|d| (d.device_uid.as_str(), d.slot))
                .collect();
            assert_eq!(slots, [("dev0", 0), ("dev1", 1), ("new", 2)]);
            assert_eq!(devs[0].last_seen_ms, 7);
            assert!(matches!(
                s.upsert_devices(9999, &[device("x")], 7).await,
                Err(StoreError::NotFound)
            ));

            let agent = s.agent_by_uid("agent-rig-x").await.unwrap().unwrap();
            s.remove_rig(id).await.unwrap();
            assert!(s.rig_by_id(id).await.unwrap().is_none());
            assert!(s.list_devices(id).await.unwrap().is_empty());
            assert!(
                s.agent_by_uid("agent-rig-x")
                    .await
                    .unwrap()
                    .unwrap()
                    .revoked
            );
            assert!(!agent.revoked);
            assert!(matches!(s.remove_rig(id).await, Err(StoreError::NotFound)));
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn removing_one_of_two_rigs_keeps_the_agent() {
        for db in test_backends().await {
            let s = &db.store;
            let rigs = s
                .register_agent(
                    &new_agent("gw", &"cd".repeat(32)),
                    &[new_rig("a", &[]), new_rig("b", &[])],
                )
                .await
                .unwrap();
            s.remove_rig(rigs[0].id).await.unwrap();
            assert!(!s.agent_by_uid("gw").await.unwrap().unwrap().revoked);
            s.remove_rig(rigs[1].id).await.unwrap();
            assert!(s.agent_by_uid("gw").await.unwrap().unwrap().revoked);
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn list_rigs_filters_sorts_pages_and_refuses_unknown_sort() {
        for db in test_backends().await {
            let s = &db.store;
            let mut ids = Vec::new();
            for (i, name) in ["delta", "alpha", "charlie", "bravo", "echo_1"]
                .iter()
                .enumerate()
            {
                let id = one_rig(s, &format!("uid-{i}"), 0).await;
                s.rename_rig(id, name).await.unwrap();
                ids.push(id);
            }
            s.set_rig_group(ids[0], Some("g1")).await.unwrap();
            s.set_rig_group(ids[1], Some("g1")).await.unwrap();
            s.set_rig_tags(ids[2], &["hot".into()]).await.unwrap();
            s.set_rig_tags(ids[1], &["hot".into(), "old".into()])
                .await
                .unwrap();

            let names =
                |p: &Page<RigRow>| p.items.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
            let all = s.list_rigs(&RigFilter::default()).await.unwrap();
            assert_eq!(
                (names(&all), all.total),
                (
                    vec![
                        "alpha".to_string(),
                        "bravo".into(),
                        "charlie".into(),
                        "delta".into(),
                        "echo_1".into()
                    ],
                    5
                )
            );
            let page = s
                .list_rigs(&RigFilter {
                    limit: 2,
                    offset: 2,
                    descending: true,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(
                (names(&page), page.total),
                (vec!["charlie".to_string(), "bravo".into()], 5)
            );
            let g = s
                .list_rigs(&RigFilter {
                    group: Some("g1".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(names(&g), ["alpha", "delta"]);
            let t = s
                .list_rigs(&RigFilter {
                    tag: Some("hot".into()),
                    group: Some("g1".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!((names(&t), t.total), (vec!["alpha".to_string()], 1));
            assert_eq!(t.items[0].tags, ["hot", "old"]);
            let txt = s
                .list_rigs(&RigFilter {
                    text: Some("LPH".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(names(&txt), ["alpha"]);
            // `_` is literal, not a wildcard.
            let txt = s
                .list_rigs(&RigFilter {
                    text: Some("o_".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(names(&txt), ["echo_1"]);
            let uid = s
                .list_rigs(&RigFilter {
                    text: Some("uid-3".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(names(&uid), ["bravo"]);
            // Group sort puts rigs without a group last on both databases.
            let by_group = s
                .list_rigs(&RigFilter {
                    sort: Some("group".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(by_group.items.last().unwrap().group, None);
            assert_eq!(by_group.items[0].group.as_deref(), Some("g1"));
            for bad in ["name; DROP TABLE rigs", "password_hash", ""] {
                let r = s
                    .list_rigs(&RigFilter {
                        sort: Some(bad.into()),
                        ..Default::default()
                    })
                    .await;
                assert!(matches!(r, Err(StoreError::Invalid(_))), "{bad}");
            }
            assert_eq!(s.list_rigs(&RigFilter::default()).await.unwrap().total, 5);
            db.cleanup().await;
        }
    }
}

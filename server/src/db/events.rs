//! The event log (what happened on rigs) and the audit log (what operators changed).

use super::row::{bind_args, Arg, RowExt};
use super::{dispatch, AuditRow, EventRow, NewEvent, Store, StoreError};

/// Rows per multi-row insert (5 binds each, far under both databases' limits).
const EVENT_CHUNK: usize = 500;

impl Store {
    /// Stores events in multi-row inserts.
    pub async fn insert_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        for chunk in events.chunks(EVENT_CHUNK) {
            // rig_id is bound on its own because it may be NULL, which Arg does not carry.
            let args: Vec<(Option<i64>, [Arg; 4])> = chunk
                .iter()
                .map(|e| {
                    (
                        e.rig_id,
                        [
                            Arg::I64(e.time_ms),
                            Arg::Text(e.severity.clone()),
                            Arg::Text(e.kind.clone()),
                            Arg::Text(e.message.clone()),
                        ],
                    )
                })
                .collect();
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let b = i * 5;
                    format!(
                        "(${}, ${}, ${}, ${}, ${})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO events (rig_id, time_ms, severity, kind, message) VALUES {}",
                values.join(", ")
            );
            dispatch!(self, p => {
                let mut q = sqlx::query(&sql);
                for (rig, rest) in &args {
                    q = bind_args!(q.bind(*rig), rest.iter());
                }
                q.persistent(false).execute(p).await?;
            });
        }
        Ok(())
    }

    /// Events of one rig (or of all), newest first, before an id for paging.
    pub async fn list_events(
        &self,
        rig_id: Option<i64>,
        limit: i64,
        before_id: Option<i64>,
    ) -> Result<Vec<EventRow>, StoreError> {
        let rig_cond = if rig_id.is_some() {
            "rig_id = $1"
        } else {
            "$1 IS NULL"
        };
        let sql = format!(
            "SELECT id, rig_id, time_ms, severity, kind, message FROM events
             WHERE {rig_cond} AND id < $2 ORDER BY id DESC LIMIT $3"
        );
        dispatch!(self, p => {
            let rows = sqlx::query(&sql)
                .bind(rig_id).bind(before_id.unwrap_or(i64::MAX)).bind(limit.clamp(0, 1000))
                .fetch_all(p).await?;
            rows.iter().map(|r| Ok(EventRow {
                id: r.i64("id")?,
                rig_id: r.opt_i64("rig_id")?,
                time_ms: r.i64("time_ms")?,
                severity: r.text("severity")?,
                kind: r.text("kind")?,
                message: r.text("message")?,
            })).collect()
        })
    }

    /// Records an operator's change.
    pub async fn insert_audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, p => {
            sqlx::query("INSERT INTO audit_log (time_ms, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)")
                .bind(now_ms).bind(actor).bind(action).bind(target).bind(detail).execute(p).await?;
        });
        Ok(())
    }

    /// Records an operator's change now; a failure is logged rather than failing the change
    /// that was already made.
    pub async fn audit(&self, actor: &str, action: &str, target: &str, detail: &str) {
        if let Err(error) = self
            .insert_audit(actor, action, target, detail, crate::now_ms())
            .await
        {
            tracing::warn!(%error, action, "Could not write the audit log");
        }
    }

    /// The audit log, newest first, before an id for paging.
    pub async fn list_audit(
        &self,
        limit: i64,
        before_id: Option<i64>,
    ) -> Result<Vec<AuditRow>, StoreError> {
        dispatch!(self, p => {
            let rows = sqlx::query(
                "SELECT id, time_ms, actor, action, target, detail FROM audit_log
                 WHERE id < $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(before_id.unwrap_or(i64::MAX)).bind(limit.clamp(0, 1000))
            .fetch_all(p).await?;
            rows.iter().map(|r| Ok(AuditRow {
                id: r.i64("id")?,
                time_ms: r.i64("time_ms")?,
                actor: r.text("actor")?,
                action: r.text("action")?,
                target: r.text("target")?,
                detail: r.text("detail")?,
            })).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::rigs::tests::one_rig;
    use super::super::test_db::test_backends;
    use super::*;

    fn ev(rig_id: Option<i64>, i: i64) -> NewEvent {
        NewEvent {
            rig_id,
            time_ms: i,
            severity: "warning".into(),
            kind: "pool_switch".into(),
            message: format!("m{i}"),
        }
    }

    #[tokio::test]
    async fn events_and_audit() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "r1", 0).await;
            let mut batch: Vec<NewEvent> = (0..1200).map(|i| ev(Some(rig), i)).collect();
            batch.push(ev(None, 5000));
            s.insert_events(&batch).await.unwrap();
            s.insert_events(&[]).await.unwrap();
            let all = s.list_events(None, 3, None).await.unwrap();
            assert_eq!(
                all.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
                ["m5000", "m1199", "m1198"]
            );
            assert_eq!(all[0].rig_id, None);
            let mine = s.list_events(Some(rig), 2, Some(all[2].id)).await.unwrap();
            assert_eq!(
                mine.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
                ["m1197", "m1196"]
            );
            assert_eq!(mine[0].severity, "warning");
            assert_eq!(
                s.list_events(Some(rig), 5000, None).await.unwrap().len(),
                1000
            );

            s.insert_audit("alice", "rig.rename", "rig-1", "{\"name\":\"x\"}", 7)
                .await
                .unwrap();
            s.insert_audit("bob", "profile.set", "p", "", 8)
                .await
                .unwrap();
            let audit = s.list_audit(10, None).await.unwrap();
            assert_eq!(
                audit.iter().map(|a| a.actor.as_str()).collect::<Vec<_>>(),
                ["bob", "alice"]
            );
            assert_eq!(audit[1].detail, "{\"name\":\"x\"}");
            db.cleanup().await;
        }
    }
}

//! Commands sent to rigs and their results.

use super::row::RowExt;
use super::{dispatch, CommandRow, Store, StoreError};

fn command_from(r: &impl RowExt) -> Result<CommandRow, StoreError> {
    Ok(CommandRow {
        id: r.i64("id")?,
        rig_id: r.i64("rig_id")?,
        command_uid: r.text("command_uid")?,
        command_json: r.text("command_json")?,
        created_by: r.opt_text("created_by")?,
        created_at_ms: r.i64("created_at_ms")?,
        finished_at_ms: r.opt_i64("finished_at_ms")?,
        ok: r.opt_flag("ok")?,
        output: r.opt_text("output")?,
    })
}

impl Store {
    /// Records a command sent to a rig; `Conflict` when the command id exists.
    pub async fn insert_command(
        &self,
        rig_id: i64,
        command_uid: &str,
        command_json: &str,
        created_by: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, p => {
            sqlx::query(
                "INSERT INTO commands (rig_id, command_uid, command_json, created_by, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(rig_id).bind(command_uid).bind(command_json).bind(created_by).bind(now_ms)
            .execute(p).await
            .map_err(|e| StoreError::conflict_on_unique(e, "command id exists"))?;
        });
        Ok(())
    }

    /// Stores a command's result; false when the command is unknown for this rig or already
    /// finished (a resent result does not overwrite the first).
    pub async fn finish_command(
        &self,
        rig_id: i64,
        command_uid: &str,
        ok: bool,
        output: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        dispatch!(self, p => Ok(sqlx::query(
            "UPDATE commands SET finished_at_ms = $3, ok = $4, output = $5
             WHERE rig_id = $1 AND command_uid = $2 AND finished_at_ms IS NULL",
        )
        .bind(rig_id).bind(command_uid).bind(now_ms).bind(ok).bind(output)
        .execute(p).await?.rows_affected() == 1))
    }

    /// A rig's commands, newest first.
    pub async fn list_commands(
        &self,
        rig_id: i64,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<CommandRow>, StoreError> {
        dispatch!(self, p => {
            let rows = sqlx::query(
                "SELECT id, rig_id, command_uid, command_json, created_by, created_at_ms, finished_at_ms, ok, output
                 FROM commands WHERE rig_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
            )
            .bind(rig_id).bind(limit.clamp(0, 1000)).bind(offset.max(0))
            .fetch_all(p).await?;
            rows.iter().map(command_from).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::rigs::tests::one_rig;
    use super::super::test_db::test_backends;
    use super::*;

    #[tokio::test]
    async fn commands_are_recorded_finished_once_and_listed() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "r1", 0).await;
            for i in 0..3 {
                s.insert_command(
                    rig,
                    &format!("cmd-{i}"),
                    r#"{"kind":"identify","seconds":5}"#,
                    Some("bob"),
                    i,
                )
                .await
                .unwrap();
            }
            assert!(matches!(
                s.insert_command(rig, "cmd-0", "{}", None, 9).await,
                Err(StoreError::Conflict(_))
            ));
            assert!(s
                .finish_command(rig, "cmd-1", true, "done", 100)
                .await
                .unwrap());
            assert!(!s
                .finish_command(rig, "cmd-1", false, "again", 101)
                .await
                .unwrap());
            assert!(!s.finish_command(rig, "cmd-9", true, "", 100).await.unwrap());
            let list = s.list_commands(rig, 2, 0).await.unwrap();
            assert_eq!(
                list.iter()
                    .map(|c| c.command_uid.as_str())
                    .collect::<Vec<_>>(),
                ["cmd-2", "cmd-1"]
            );
            assert_eq!(
                (
                    list[1].ok,
                    list[1].output.as_deref(),
                    list[1].finished_at_ms
                ),
                (Some(true), Some("done"), Some(100))
            );
            assert_eq!(
                (list[0].ok, list[0].created_by.as_deref()),
                (None, Some("bob"))
            );
            assert_eq!(s.list_commands(rig, 10, 2).await.unwrap().len(), 1);
            s.remove_rig(rig).await.unwrap();
            assert!(s.list_commands(rig, 10, 0).await.unwrap().is_empty());
            db.cleanup().await;
        }
    }
}

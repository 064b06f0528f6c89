//! Commands to rigs (restart mining, identify, switch pool, benchmark, reboot, shell): to one rig
//! ([`send`]) or to a selection ([`send_many`], with a result per rig), and a rig's list.
//! Each is signed and sent through the hub, and audited.

use std::time::Duration;

use rigfleet_proto::command::{Command, CommandOrder};
use rigfleet_proto::RigId;

use super::actor::{Actor, Permission};
use super::error::FleetError;
use super::rigs::find_rig;
use crate::app::AppState;
use crate::hub::{CommandOutcome, CommandWait};

/// Most rigs one [`send_many`] reaches.
pub const MAX_SELECTION: usize = 10_000;

/// The permission a command takes: a reboot and a shell command their own, the rest
/// [`Permission::Operate`].
pub fn permission(command: &Command) -> Permission {
    match command {
        Command::Reboot => Permission::Reboot,
        Command::Shell { .. } => Permission::RunShell,
        Command::RestartMining
        | Command::Identify { .. }
        | Command::RunBenchmark { .. }
        | Command::SwitchPool { .. } => Permission::Operate,
    }
}

/// Whether the command needs [`Actor::require_fresh`] (a shell command, a reboot): the
/// dashboard asks for the password when this is true.
pub fn needs_password(command: &Command) -> bool {
    super::access::command_needs_reauth(command)
}

/// The command's kind as the API names it (`reboot`, `restart_mining`…).
pub fn kind(command: &Command) -> String {
    serde_json::to_value(command)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

fn allowed(actor: &Actor, command: &Command) -> Result<(), FleetError> {
    actor.require(permission(command))?;
    if needs_password(command) {
        actor.require_fresh("a shell command or a reboot")?;
    }
    Ok(())
}

fn validate(command: &Command) -> Result<(), FleetError> {
    CommandOrder {
        command_id: "check".into(),
        command: command.clone(),
    }
    .validate()
    .map_err(|e| FleetError::BadRequest(e.to_string()))
}

/// A command on its way: its id, and its result once the rig answers.
#[derive(Debug)]
pub struct SentCommand {
    /// Command id (`cmd-…`).
    pub id: String,
    /// The command as sent (JSON, `{"kind":…}`).
    pub command: serde_json::Value,
    /// When it was sent (Unix ms).
    pub created_at_ms: i64,
    wait: CommandWait,
}

impl SentCommand {
    /// The rig's answer, if it comes within `within` (an offline rig's is at once: not sent).
    pub async fn outcome(self, within: Duration) -> Option<CommandOutcome> {
        tokio::time::timeout(within, self.wait)
            .await
            .ok()
            .and_then(Result::ok)
    }
}

/// Sends `command` to one rig (audited as `rig.command`).
pub async fn send(
    state: &AppState,
    actor: &Actor,
    rig_uid: &str,
    command: Command,
) -> Result<SentCommand, FleetError> {
    allowed(actor, &command)?;
    let row = find_rig(state, rig_uid).await?;
    validate(&command)?;
    let json = serde_json::to_value(&command).unwrap_or_default();
    let (id, wait) = state
        .hub
        .send_command(
            row.id,
            &RigId(row.rig_uid.clone()),
            command,
            Some(&actor.audit_name()),
        )
        .await?;
    super::audit::record(state, actor, "rig.command", &row.rig_uid, &json.to_string()).await;
    Ok(SentCommand {
        id: id.0,
        command: json,
        created_at_ms: crate::now_ms(),
        wait,
    })
}

/// What [`send_many`] did for one rig.
#[derive(Debug)]
pub struct RigResult {
    /// Rig id as given.
    pub rig: String,
    /// The command id, or why nothing was sent to this rig (an unknown rig, a database
    /// failure).
    pub result: Result<String, FleetError>,
}

/// Sends `command` to each rig of `rig_uids` (at most [`MAX_SELECTION`]) without waiting for
/// answers: one result per rig, in order; one audit entry (`rig.bulk_command`) for the lot.
pub async fn send_many<S: AsRef<str>>(
    state: &AppState,
    actor: &Actor,
    rig_uids: &[S],
    command: Command,
) -> Result<Vec<RigResult>, FleetError> {
    allowed(actor, &command)?;
    validate(&command)?;
    if rig_uids.is_empty() {
        return Err(FleetError::BadRequest("select at least one rig".into()));
    }
    if rig_uids.len() > MAX_SELECTION {
        return Err(FleetError::BadRequest("too many rigs in one action".into()));
    }
    let actor_name = actor.audit_name();
    let mut results = Vec::with_capacity(rig_uids.len());
    for uid in rig_uids {
        let uid = uid.as_ref();
        let result = match find_rig(state, uid).await {
            Ok(row) => state
                .hub
                .send_command(
                    row.id,
                    &RigId(row.rig_uid.clone()),
                    command.clone(),
                    Some(&actor_name),
                )
                .await
                // Nobody waits for bulk answers: dropping the wait forgets it in the hub, the
                // answer is still stored.
                .map(|(id, _wait)| id.0)
                .map_err(FleetError::from),
            Err(e) => Err(e),
        };
        results.push(RigResult {
            rig: uid.to_string(),
            result,
        });
    }
    let sent = results.iter().filter(|r| r.result.is_ok()).count();
    super::audit::record(
        state,
        actor,
        "rig.bulk_command",
        &format!("{sent} rigs"),
        &kind(&command),
    )
    .await;
    Ok(results)
}

/// A command sent to a rig and its result.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandEntry {
    /// Command id.
    pub id: String,
    /// The command (JSON, `{"kind":…}`).
    pub command: serde_json::Value,
    /// Who sent it.
    pub created_by: Option<String>,
    /// When (Unix ms).
    pub created_at_ms: i64,
    /// When the result came (Unix ms).
    pub finished_at_ms: Option<i64>,
    /// Whether it worked (absent: no result yet).
    pub ok: Option<bool>,
    /// Output or refusal.
    pub output: Option<String>,
}

/// Commands sent to a rig, newest first: `limit` (1 to 500, default 50) after `offset`.
pub async fn list(
    state: &AppState,
    actor: &Actor,
    rig_uid: &str,
    limit: Option<i64>,
    offset: Option<i64>,
) -> Result<Vec<CommandEntry>, FleetError> {
    actor.require(Permission::View)?;
    let row = find_rig(state, rig_uid).await?;
    let rows = state
        .hub
        .store
        .list_commands(
            row.id,
            limit.unwrap_or(50).clamp(1, 500),
            offset.unwrap_or(0).max(0),
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|c| CommandEntry {
            id: c.command_uid,
            // Stored is the whole order (`{"command_id":…,"command":{…}}`).
            command: serde_json::from_str::<serde_json::Value>(&c.command_json)
                .ok()
                .and_then(|v| v.get("command").cloned())
                .unwrap_or_default(),
            created_by: c.created_by,
            created_at_ms: c.created_at_ms,
            finished_at_ms: c.finished_at_ms,
            ok: c.ok,
            output: c.output,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Role, Scope};

    #[test]
    fn reboot_and_shell_take_their_own_permission_and_the_password() {
        let reboot = Command::Reboot;
        let shell = Command::Shell {
            command: "id".into(),
        };
        let identify = Command::Identify { seconds: 5 };
        assert_eq!(permission(&reboot), Permission::Reboot);
        assert_eq!(permission(&shell), Permission::RunShell);
        assert_eq!(permission(&identify), Permission::Operate);
        let user = Actor::user(1, "olga", Role::Operator);
        assert!(matches!(
            allowed(&user, &reboot),
            Err(FleetError::ReauthRequired(_))
        ));
        assert!(allowed(&user.clone().reauthenticated(), &reboot).is_ok());
        assert!(allowed(&user, &identify).is_ok());
        assert!(allowed(&Actor::token("ci", Scope::Write), &shell).is_ok());
        assert!(matches!(
            allowed(&Actor::token("ro", Scope::Read), &identify),
            Err(FleetError::Forbidden(_))
        ));
        assert!(matches!(
            allowed(&Actor::system("cli"), &shell),
            Err(FleetError::Forbidden(_))
        ));
        assert_eq!(kind(&reboot), "reboot");
        assert_eq!(kind(&Command::RestartMining), "restart_mining");
    }
}

//! Users: the admin's list and changes (create, role, password, removal), each needing
//! [`Permission::ManageUsers`], and a user's own account (password, second factor), which only
//! the user themself changes. Every change is audited; passwords and secrets never are.

use super::actor::{Actor, ActorKind, Permission};
use super::error::FleetError;
use crate::app::AppState;
use crate::auth::{password, totp};
use crate::db::Role;

/// Recovery codes made when the second factor is turned on.
pub const RECOVERY_CODES: usize = 8;

/// A user as the admin's list shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    /// Id.
    pub id: i64,
    /// Name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// Has a second factor.
    pub totp: bool,
}

/// What a role change did.
#[derive(Clone, Debug)]
pub struct RoleChanged {
    /// Whose.
    pub username: String,
    /// The new role.
    pub role: Role,
    /// The actor changed their own role (their sessions ended with the others).
    pub own: bool,
}

/// A second factor being set up: the secret, shown once as text and as a QR code.
#[derive(Clone, Debug)]
pub struct TotpSetup {
    /// Base32 secret.
    pub secret: String,
    /// SVG of the QR code of the `otpauth://` URI (modules only).
    pub qr_svg: Option<String>,
}

/// A user's own account as their page shows it.
#[derive(Clone, Debug)]
pub struct OwnAccount {
    /// Login name.
    pub username: String,
    /// Has a second factor.
    pub totp_enabled: bool,
}

const ROLE_PROBLEM: &str = "role must be admin, operator or viewer";

fn parse_role(text: &str) -> Result<Role, FleetError> {
    Role::parse(text).ok_or_else(|| FleetError::field("invalid_user", "role", ROLE_PROBLEM))
}

/// Whether a name may be a login name: 1 to 64 letters, digits or `. _ - @`.
pub fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

fn check_password(new: &str, confirm: &str, field: &str) -> Result<(), FleetError> {
    password::check_new(new, confirm).map_err(|m| FleetError::field("invalid_password", field, m))
}

/// The user acting on their own account: only signed-in users have one.
fn own_id(actor: &Actor) -> Result<(i64, &str), FleetError> {
    match &actor.kind {
        ActorKind::User { id, name } => Ok((*id, name.as_str())),
        _ => Err(FleetError::Forbidden(
            "only a signed-in user has an account of their own".into(),
        )),
    }
}

async fn target(state: &AppState, id: i64) -> Result<crate::db::User, FleetError> {
    state
        .hub
        .store
        .user_by_id(id)
        .await?
        .ok_or_else(|| FleetError::not_found("user"))
}

async fn audit(state: &AppState, actor: &Actor, action: &str, target: &str, detail: &str) {
    state
        .hub
        .store
        .audit(&actor.audit_name(), action, target, detail)
        .await;
}

/// Every user, by name.
pub async fn list(state: &AppState, actor: &Actor) -> Result<Vec<UserEntry>, FleetError> {
    actor.require(Permission::ManageUsers)?;
    Ok(state
        .hub
        .store
        .list_users()
        .await?
        .into_iter()
        .map(|u| UserEntry {
            id: u.id,
            username: u.username,
            role: u.role,
            totp: u.totp,
        })
        .collect())
}

/// Creates a user with a password and a role; returns the new id. A taken name is a conflict.
pub async fn create(
    state: &AppState,
    actor: &Actor,
    username: &str,
    new_password: &str,
    role: &str,
) -> Result<i64, FleetError> {
    actor.require(Permission::ManageUsers)?;
    let role = parse_role(role)?;
    let username = username.trim();
    if !valid_username(username) {
        return Err(FleetError::field(
            "invalid_user",
            "username",
            "User names are 1 to 64 letters, digits or . _ - @.",
        ));
    }
    check_password(new_password, new_password, "password")?;
    let hash = password::hash_password_async(new_password).await?;
    let id = match state.hub.store.create_user(username, &hash, role).await {
        Ok(id) => id,
        Err(crate::db::StoreError::Conflict(_)) => {
            return Err(FleetError::Conflict(format!(
                "The name {username} is taken."
            )))
        }
        Err(e) => return Err(e.into()),
    };
    audit(
        state,
        actor,
        "user.create",
        username,
        &format!("role {}", role.as_str()),
    )
    .await;
    Ok(id)
}

/// Gives a user another role and ends their sessions (they log in again with it). The last
/// admin keeps the admin role.
pub async fn set_role(
    state: &AppState,
    actor: &Actor,
    id: i64,
    role: &str,
) -> Result<RoleChanged, FleetError> {
    actor.require(Permission::ManageUsers)?;
    let role = parse_role(role)?;
    let user = target(state, id).await?;
    let store = &state.hub.store;
    if user.role == Role::Admin && role != Role::Admin && store.admin_count().await? <= 1 {
        return Err(FleetError::BadRequest(
            "The last admin keeps the admin role.".into(),
        ));
    }
    store.set_user_role(id, role).await?;
    store.delete_sessions_of(id).await?;
    audit(
        state,
        actor,
        "user.role",
        &user.username,
        &format!("{} → {}", user.role.as_str(), role.as_str()),
    )
    .await;
    Ok(RoleChanged {
        own: own_id(actor).is_ok_and(|(me, _)| me == id),
        username: user.username,
        role,
    })
}

/// An admin sets a user's password: the user's sessions end (all but `keep_session`, the
/// SHA-256 of the acting session's cookie, when admins set their own), and a locked second
/// factor opens again (this is how a locked-out user gets back in). Returns the user's name.
pub async fn set_password(
    state: &AppState,
    actor: &Actor,
    id: i64,
    new_password: &str,
    keep_session: Option<&str>,
) -> Result<String, FleetError> {
    actor.require(Permission::ManageUsers)?;
    let user = target(state, id).await?;
    check_password(new_password, new_password, "password")?;
    let hash = password::hash_password_async(new_password).await?;
    let store = &state.hub.store;
    store.set_user_password(id, &hash).await?;
    let own = own_id(actor).is_ok_and(|(me, _)| me == id);
    let ended = match keep_session.filter(|_| own) {
        Some(keep) => store.delete_other_sessions(id, keep).await?,
        None => store.delete_sessions_of(id).await?,
    };
    store.totp_attempt_succeeded(id).await?;
    audit(
        state,
        actor,
        "user.reset_password",
        &user.username,
        &format!("sessions ended: {ended}"),
    )
    .await;
    Ok(user.username)
}

/// Removes a user with their sessions and API tokens. Nobody removes themself, and the last
/// admin stays. Returns the name.
pub async fn delete(state: &AppState, actor: &Actor, id: i64) -> Result<String, FleetError> {
    actor.require(Permission::ManageUsers)?;
    if own_id(actor).is_ok_and(|(me, _)| me == id) {
        return Err(FleetError::BadRequest("You cannot remove yourself.".into()));
    }
    let user = target(state, id).await?;
    let store = &state.hub.store;
    if user.role == Role::Admin && store.admin_count().await? <= 1 {
        return Err(FleetError::BadRequest("The last admin stays.".into()));
    }
    store.delete_user(id).await?;
    audit(
        state,
        actor,
        "user.delete",
        &user.username,
        &format!("role {}", user.role.as_str()),
    )
    .await;
    Ok(user.username)
}

/// The actor's own account.
pub async fn own_account(state: &AppState, actor: &Actor) -> Result<OwnAccount, FleetError> {
    let (id, _) = own_id(actor)?;
    let user = state
        .hub
        .store
        .user_by_id(id)
        .await?
        .ok_or_else(|| FleetError::Forbidden("user gone".into()))?;
    Ok(OwnAccount {
        username: user.username,
        totp_enabled: user.totp_secret.is_some(),
    })
}

/// Changes the actor's own password. The actor must have re-entered the current one for this
/// request ([`Actor::reauthenticated`]); every other session of theirs ends (a stolen cookie,
/// a forgotten screen), `keep_session` stays. Returns how many sessions ended.
pub async fn change_own_password(
    state: &AppState,
    actor: &Actor,
    keep_session: &str,
    new_password: &str,
    confirm: &str,
) -> Result<u64, FleetError> {
    let (id, name) = own_id(actor)?;
    actor.require_fresh("changing your password")?;
    check_password(new_password, confirm, "new_password")?;
    let hash = password::hash_password_async(new_password).await?;
    let store = &state.hub.store;
    store.set_user_password(id, &hash).await?;
    let ended = store.delete_other_sessions(id, keep_session).await?;
    audit(
        state,
        actor,
        "user.password",
        name,
        &format!("other sessions ended: {ended}"),
    )
    .await;
    Ok(ended)
}

/// A new second-factor secret for the actor to scan. Nothing is stored: the transport keeps
/// the secret until [`totp_confirm`] gets a code made from it.
pub fn totp_start(actor: &Actor) -> Result<TotpSetup, FleetError> {
    let (_, name) = own_id(actor)?;
    let secret = totp::new_secret().ok_or_else(|| FleetError::Internal("no randomness".into()))?;
    let uri = totp::otpauth_uri("rigfleet", name, &secret);
    Ok(TotpSetup {
        qr_svg: totp::qr_svg(&uri),
        secret,
    })
}

/// Turns the actor's second factor on once `code` proves their app holds `secret`. The code
/// does not log in again, the actor's other sessions end, and recovery codes are returned to
/// be shown once (only their hashes are kept).
pub async fn totp_confirm(
    state: &AppState,
    actor: &Actor,
    keep_session: &str,
    secret: &str,
    code: &str,
) -> Result<Vec<String>, FleetError> {
    let (id, name) = own_id(actor)?;
    let now_secs = u64::try_from(crate::now_ms() / 1000).unwrap_or(0);
    let Some(step) = totp::verify_step(secret, code, now_secs) else {
        return Err(FleetError::field(
            "invalid_code",
            "code",
            "That code is not right; the setup was not saved.",
        ));
    };
    let (codes, hashes) = totp::recovery_codes(RECOVERY_CODES)
        .ok_or_else(|| FleetError::Internal("no randomness".into()))?;
    let store = &state.hub.store;
    let was_on = own_account(state, actor).await?.totp_enabled;
    store
        .set_user_totp(id, Some(secret), crate::now_ms())
        .await?;
    // The code that turned it on was seen on this screen: it does not log in again.
    store.totp_use_step(id, step).await?;
    store.set_recovery_codes(id, &hashes).await?;
    let ended = store.delete_other_sessions(id, keep_session).await?;
    let before = if was_on { "on (old secret)" } else { "off" };
    audit(
        state,
        actor,
        "user.totp_on",
        name,
        &format!("second factor {before} → on; other sessions ended: {ended}"),
    )
    .await;
    Ok(codes)
}

/// Turns the actor's second factor off (they re-entered their password for this request); their
/// recovery codes go and their other sessions end.
pub async fn totp_disable(
    state: &AppState,
    actor: &Actor,
    keep_session: &str,
) -> Result<(), FleetError> {
    let (id, name) = own_id(actor)?;
    actor.require_fresh("turning the second factor off")?;
    let store = &state.hub.store;
    store.set_user_totp(id, None, crate::now_ms()).await?;
    store.set_recovery_codes(id, &[]).await?;
    let ended = store.delete_other_sessions(id, keep_session).await?;
    audit(
        state,
        actor,
        "user.totp_off",
        name,
        &format!("second factor on → off; other sessions ended: {ended}"),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::db::test_db::TestDb;
    use crate::db::Scope;
    use crate::fleet::StatusJudge;
    use crate::hub::live::LiveState;
    use crate::hub::Hub;
    use crate::ingest::{WriterMetrics, WriterOptions};
    use crate::metrics::ServerMetrics;

    async fn state(db: &TestDb) -> AppState {
        let store = db.store.clone();
        let live = Arc::new(LiveState::default());
        let judge = Arc::new(StatusJudge::default());
        let metrics =
            Arc::new(ServerMetrics::new(live.clone(), judge.clone()).expect("metrics register"));
        let writer = crate::ingest::spawn_writer(
            store.clone(),
            WriterOptions::default(),
            WriterMetrics::unregistered(),
        );
        let key = crate::keys::ServerKey::generate().expect("key");
        let hub = Arc::new(Hub::new(store, writer, key, None, live, metrics, 10));
        AppState {
            hub,
            status: judge,
            metrics_token: None,
            public_url: "http://127.0.0.1:9".into(),
            tls_fingerprint: None,
            enroll_limiter: Arc::default(),
        }
    }

    async fn last_audit(state: &AppState) -> crate::db::AuditRow {
        state
            .hub
            .store
            .list_audit(1, None)
            .await
            .expect("audit")
            .remove(0)
    }

    #[tokio::test]
    async fn admins_manage_users_others_may_not_and_the_last_admin_stays() {
        let db = TestDb::sqlite().await.expect("test database");
        let state = state(&db).await;
        let store = &state.hub.store;
        let admin_id = store
            .create_user("root", "x", Role::Admin)
            .await
            .expect("admin");
        let admin = Actor::user(admin_id, "root", Role::Admin);
        let viewer = Actor::user(admin_id + 100, "vera", Role::Viewer);

        assert!(matches!(
            list(&state, &viewer).await,
            Err(FleetError::Forbidden(_))
        ));
        assert!(matches!(
            create(&state, &viewer, "eve", "long-password-1", "admin").await,
            Err(FleetError::Forbidden(_))
        ));
        assert!(matches!(
            create(&state, &admin, "bad name", "long-password-1", "viewer").await,
            Err(FleetError::Invalid { .. })
        ));
        assert!(matches!(
            create(&state, &admin, "kim", "short", "viewer").await,
            Err(FleetError::Invalid { .. })
        ));
        assert!(matches!(
            create(&state, &admin, "kim", "long-password-1", "boss").await,
            Err(FleetError::Invalid { .. })
        ));

        let kim = create(&state, &admin, "kim", "long-password-1", "viewer")
            .await
            .expect("created");
        let entry = last_audit(&state).await;
        assert_eq!(
            (
                entry.actor.as_str(),
                entry.action.as_str(),
                entry.target.as_str()
            ),
            ("user:root", "user.create", "kim")
        );
        assert!(!entry.detail.contains("long-password-1"));
        assert!(matches!(
            create(&state, &admin, "kim", "long-password-1", "viewer").await,
            Err(FleetError::Conflict(_))
        ));

        let changed = set_role(&state, &admin, kim, "operator")
            .await
            .expect("role");
        assert!(!changed.own);
        assert_eq!(last_audit(&state).await.detail, "viewer → operator");

        // The last admin keeps the role and stays, whoever asks (an admin token too).
        assert!(matches!(
            set_role(&state, &admin, admin_id, "viewer").await,
            Err(FleetError::BadRequest(_))
        ));
        let token = Actor::token("ci", Scope::Admin);
        assert!(matches!(
            delete(&state, &token, admin_id).await,
            Err(FleetError::BadRequest(_))
        ));
        assert!(matches!(
            delete(&state, &admin, admin_id).await,
            Err(FleetError::BadRequest(_))
        ));

        set_password(&state, &admin, kim, "another-password-2", None)
            .await
            .expect("password");
        let entry = last_audit(&state).await;
        assert_eq!(entry.action, "user.reset_password");
        assert!(!entry.detail.contains("another-password-2"));

        assert_eq!(delete(&state, &admin, kim).await.expect("removed"), "kim");
        assert!(matches!(
            delete(&state, &admin, kim).await,
            Err(FleetError::NotFound(_))
        ));
        let names: Vec<String> = list(&state, &admin)
            .await
            .expect("list")
            .into_iter()
            .map(|u| u.username)
            .collect();
        assert_eq!(names, ["root"]);
        db.cleanup().await;
    }

    #[tokio::test]
    async fn own_account_changes_need_the_user_and_their_password_again() {
        let db = TestDb::sqlite().await.expect("test database");
        let state = state(&db).await;
        let id = state
            .hub
            .store
            .create_user("olaf", "x", Role::Viewer)
            .await
            .expect("user");
        let olaf = Actor::user(id, "olaf", Role::Viewer);
        assert!(matches!(
            change_own_password(&state, &olaf, "keep", "new-password-1", "new-password-1").await,
            Err(FleetError::ReauthRequired(_))
        ));
        assert!(matches!(
            totp_disable(&state, &olaf, "keep").await,
            Err(FleetError::ReauthRequired(_))
        ));
        let token = Actor::token("ci", Scope::Admin);
        assert!(matches!(
            change_own_password(&state, &token, "keep", "new-password-1", "new-password-1").await,
            Err(FleetError::Forbidden(_))
        ));
        let fresh = olaf.clone().reauthenticated();
        assert!(matches!(
            change_own_password(&state, &fresh, "keep", "new-password-1", "other-password-1").await,
            Err(FleetError::Invalid { .. })
        ));
        change_own_password(&state, &fresh, "keep", "new-password-1", "new-password-1")
            .await
            .expect("changed");
        assert_eq!(last_audit(&state).await.action, "user.password");

        // The second factor: a wrong code saves nothing, a right one turns it on.
        let setup = totp_start(&olaf).expect("setup");
        assert!(matches!(
            totp_confirm(&state, &olaf, "keep", &setup.secret, "000000x").await,
            Err(FleetError::Invalid { .. })
        ));
        assert!(
            !own_account(&state, &olaf)
                .await
                .expect("account")
                .totp_enabled
        );
        let key = totp::base32_decode(&setup.secret).expect("base32");
        let step = u64::try_from(crate::now_ms() / 1000).expect("time") / totp::STEP_SECS;
        let code = format!("{:06}", totp::hotp(&key, step, 6).expect("hotp"));
        let codes = totp_confirm(&state, &olaf, "keep", &setup.secret, &code)
            .await
            .expect("on");
        assert_eq!(codes.len(), RECOVERY_CODES);
        let entry = last_audit(&state).await;
        assert_eq!(entry.action, "user.totp_on");
        assert!(!entry.detail.contains(&setup.secret));
        assert!(
            own_account(&state, &olaf)
                .await
                .expect("account")
                .totp_enabled
        );
        totp_disable(&state, &fresh, "keep").await.expect("off");
        assert!(
            !own_account(&state, &olaf)
                .await
                .expect("account")
                .totp_enabled
        );
        db.cleanup().await;
    }
}

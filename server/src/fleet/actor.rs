//! Who does something, and what they may do. Every `fleet/` operation takes an [`Actor`] and
//! checks one [`Permission`]; the audit log names the actor.

use crate::db::{Role, Scope};

use super::error::FleetError;

/// One thing an actor may be allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// See the fleet, rigs, history, events.
    View,
    /// See where rigs pay out (pool users/wallets, pool passwords).
    SeeWallets,
    /// Day-to-day control: restart mining, identify, benchmark, non-pool settings.
    Operate,
    /// Change pools and wallets (configs and profiles that hold them).
    ChangePools,
    /// Reboot rigs.
    Reboot,
    /// Run shell commands on rigs (the agent must also opt in).
    RunShell,
    /// Rename, group and tag rigs; profiles and groups.
    ManageRigs,
    /// Rules, alerts, coin data for profit switching.
    ManageRules,
    /// Install and upgrade agents.
    Deploy,
    /// Enrollment tokens; approving and removing rigs.
    ManageEnrollment,
    /// API tokens.
    ManageApiTokens,
    /// Users and roles.
    ManageUsers,
    /// Server settings and the audit log.
    Settings,
}

impl Permission {
    /// Every permission, in a stable order.
    pub const ALL: [Permission; 13] = [
        Permission::View,
        Permission::SeeWallets,
        Permission::Operate,
        Permission::ChangePools,
        Permission::Reboot,
        Permission::RunShell,
        Permission::ManageRigs,
        Permission::ManageRules,
        Permission::Deploy,
        Permission::ManageEnrollment,
        Permission::ManageApiTokens,
        Permission::ManageUsers,
        Permission::Settings,
    ];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::View => "view",
            Permission::SeeWallets => "see_wallets",
            Permission::Operate => "operate",
            Permission::ChangePools => "change_pools",
            Permission::Reboot => "reboot",
            Permission::RunShell => "run_shell",
            Permission::ManageRigs => "manage_rigs",
            Permission::ManageRules => "manage_rules",
            Permission::Deploy => "deploy",
            Permission::ManageEnrollment => "manage_enrollment",
            Permission::ManageApiTokens => "manage_api_tokens",
            Permission::ManageUsers => "manage_users",
            Permission::Settings => "settings",
        }
    }

    /// Parses a stored or given name.
    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// Permissions no automatic actor (rule, profit switching, curtailment) ever holds: they
    /// redirect money or can do anything on a rig.
    pub fn never_automatic(self) -> bool {
        matches!(self, Permission::ChangePools | Permission::RunShell)
    }
}

/// A set of permissions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Permissions(u32);

impl Permissions {
    /// No permission.
    pub const NONE: Permissions = Permissions(0);

    /// These permissions.
    pub fn of(list: &[Permission]) -> Permissions {
        Permissions(list.iter().fold(0, |acc, p| acc | p.bit()))
    }

    /// Every permission.
    pub fn all() -> Permissions {
        Permissions::of(&Permission::ALL)
    }

    /// Whether `p` is in the set.
    pub fn has(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    /// The set with `p` removed.
    pub fn without(self, p: Permission) -> Permissions {
        Permissions(self.0 & !p.bit())
    }

    /// The members, in [`Permission::ALL`]'s order.
    pub fn list(self) -> Vec<Permission> {
        Permission::ALL
            .into_iter()
            .filter(|p| self.has(*p))
            .collect()
    }

    /// What a built-in role may do.
    pub fn of_role(role: Role) -> Permissions {
        use Permission::*;
        match role {
            Role::Viewer => Permissions::of(&[View]),
            Role::Operator => Permissions::of(&[
                View,
                SeeWallets,
                Operate,
                ChangePools,
                Reboot,
                RunShell,
                ManageRigs,
                ManageRules,
            ]),
            Role::Admin => Permissions::all(),
        }
    }

    /// What an API token's scope allows: read is a viewer, write an operator, admin an admin.
    pub fn of_scope(scope: Scope) -> Permissions {
        Permissions::of_role(match scope {
            Scope::Read => Role::Viewer,
            Scope::Write => Role::Operator,
            Scope::Admin => Role::Admin,
        })
    }
}

/// Who acts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActorKind {
    /// An operator signed in to the dashboard (or calling the API with a session cookie).
    User {
        /// Database id.
        id: i64,
        /// Login name.
        name: String,
    },
    /// A script with an API token.
    Token {
        /// The token's name.
        name: String,
    },
    /// An automatic rule.
    Rule {
        /// The rule's name.
        name: String,
    },
    /// The server itself: the CLI, curtailment signals, profit switching.
    System {
        /// What part of the server.
        what: String,
    },
}

/// An actor with its permissions.
#[derive(Clone, Debug)]
pub struct Actor {
    /// Who.
    pub kind: ActorKind,
    /// What they may do.
    pub permissions: Permissions,
    /// A dashboard session (a cookie rides along on cross-site requests; money-moving changes
    /// need the password again or an API token).
    pub via_session: bool,
    /// The user confirmed their password (or TOTP) for this request.
    pub reauthenticated: bool,
}

impl Actor {
    /// A signed-in user with a role.
    pub fn user(id: i64, name: &str, role: Role) -> Actor {
        Actor {
            kind: ActorKind::User {
                id,
                name: name.to_string(),
            },
            permissions: Permissions::of_role(role),
            via_session: true,
            reauthenticated: false,
        }
    }

    /// An API token with a scope.
    pub fn token(name: &str, scope: Scope) -> Actor {
        Actor {
            kind: ActorKind::Token {
                name: name.to_string(),
            },
            permissions: Permissions::of_scope(scope),
            via_session: false,
            reauthenticated: false,
        }
    }

    /// An automatic rule: never changes wallets or runs shell, whatever it is given.
    pub fn rule(name: &str, permissions: Permissions) -> Actor {
        Actor {
            kind: ActorKind::Rule {
                name: name.to_string(),
            },
            permissions: automatic(permissions),
            via_session: false,
            reauthenticated: false,
        }
    }

    /// The server itself (CLI, curtailment, profit switching): automatic, so no wallet changes
    /// and no shell.
    pub fn system(what: &str) -> Actor {
        Actor {
            kind: ActorKind::System {
                what: what.to_string(),
            },
            permissions: automatic(Permissions::all()),
            via_session: false,
            reauthenticated: false,
        }
    }

    /// The same actor, having confirmed their password for this request.
    pub fn reauthenticated(mut self) -> Actor {
        self.reauthenticated = true;
        self
    }

    /// The name the audit log records (`user:alice`, `token:ci`, `rule:hot`, `system:cli`).
    pub fn audit_name(&self) -> String {
        match &self.kind {
            ActorKind::User { name, .. } => format!("user:{name}"),
            ActorKind::Token { name } => format!("token:{name}"),
            ActorKind::Rule { name } => format!("rule:{name}"),
            ActorKind::System { what } => format!("system:{what}"),
        }
    }

    /// Whether the actor holds `p`.
    pub fn can(&self, p: Permission) -> bool {
        self.permissions.has(p)
    }

    /// Refuses unless the actor holds `p`.
    pub fn require(&self, p: Permission) -> Result<(), FleetError> {
        if self.can(p) {
            Ok(())
        } else {
            Err(FleetError::Forbidden(format!(
                "this needs the {} permission",
                p.as_str()
            )))
        }
    }

    /// Changes that redirect money (pools, wallets), shell commands and reboots: a session
    /// must have confirmed the password for this request, so a stolen cookie is not enough.
    /// API tokens are not cookies; automatic actors never get here with pool or shell
    /// permissions.
    pub fn require_fresh(&self, what: &str) -> Result<(), FleetError> {
        if self.via_session && !self.reauthenticated {
            return Err(FleetError::ReauthRequired(format!(
                "{what} needs your password again (through the API: an API token)"
            )));
        }
        Ok(())
    }
}

fn automatic(p: Permissions) -> Permissions {
    Permission::ALL
        .into_iter()
        .filter(|p| p.never_automatic())
        .fold(p, |acc, x| acc.without(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest_and_names_round_trip() {
        let viewer = Permissions::of_role(Role::Viewer);
        let operator = Permissions::of_role(Role::Operator);
        let admin = Permissions::of_role(Role::Admin);
        for p in viewer.list() {
            assert!(operator.has(p), "{p:?}");
        }
        for p in operator.list() {
            assert!(admin.has(p), "{p:?}");
        }
        assert!(!viewer.has(Permission::SeeWallets));
        assert!(!operator.has(Permission::ManageUsers));
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
    }

    #[test]
    fn automatic_actors_never_move_money_or_run_shell() {
        for actor in [Actor::system("cli"), Actor::rule("hot", Permissions::all())] {
            assert!(actor.require(Permission::ChangePools).is_err());
            assert!(actor.require(Permission::RunShell).is_err());
            assert!(actor.require(Permission::Operate).is_ok());
        }
    }

    #[test]
    fn sessions_need_the_password_again_for_money_moves_tokens_do_not() {
        let user = Actor::user(1, "ann", Role::Admin);
        assert!(matches!(
            user.require_fresh("changing pools"),
            Err(FleetError::ReauthRequired(_))
        ));
        assert!(user.clone().reauthenticated().require_fresh("x").is_ok());
        assert!(Actor::token("ci", Scope::Write).require_fresh("x").is_ok());
        assert_eq!(user.audit_name(), "user:ann");
    }
}

//! Questions about what an actor may see or must prove, asked by several operations and by both
//! transports.

use rigfleet_proto::command::Command;

use super::actor::{Permission, Permissions};
use crate::db::Scope;

/// Whether a caller with `scope` may see where rigs pay out: pool users (wallets) in configs
/// and in the rigs' telemetry, pool passwords. Operators and admins (write scope and up) may;
/// viewers and read tokens may not. The dashboard and the REST API both ask this.
pub fn may_see_wallets(scope: Scope) -> bool {
    Permissions::of_scope(scope).has(Permission::SeeWallets)
}

/// Whether a command is as dangerous as redirecting a rig's wallet, and so needs the same
/// protection: the user's password again in the dashboard, an API token (never a session
/// cookie) on the REST API. A shell command can do anything on the rig, a reboot stops it.
pub fn command_needs_reauth(command: &Command) -> bool {
    matches!(command, Command::Shell { .. } | Command::Reboot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wallets_are_for_write_scopes_and_up() {
        assert!(!may_see_wallets(Scope::Read));
        assert!(may_see_wallets(Scope::Write));
        assert!(may_see_wallets(Scope::Admin));
        assert!(command_needs_reauth(&Command::Reboot));
    }
}

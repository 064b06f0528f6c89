//! Every fleet operation, once. `api/` (REST) and `web/` (pages) are thin transports over this
//! module: an operation takes the application state and an [`Actor`], checks one
//! [`Permission`], writes its audit entry with before and after, and returns a [`FleetError`]
//! that each transport maps once. The rig's status lives here too ([`status`]), so every page,
//! API route and metric shows the same one.

pub mod access;
pub mod actor;
pub mod audit;
pub mod coins;
pub mod commands;
pub mod configs;
pub mod enrollment;
pub mod error;
pub mod layers;
pub mod profiles;
pub mod rigs;
pub mod rollouts;
pub mod status;
pub mod users;

pub use actor::{Actor, ActorKind, Permission, Permissions};
pub use error::{FieldErrors, FleetError};
pub use status::{RigStatus, StatusJudge, StatusRules};

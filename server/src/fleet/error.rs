//! What a fleet operation can fail with. Each transport maps these once: the REST API to
//! `{code, message, fields?}` with a status, the dashboard to a page with the message.

use std::collections::BTreeMap;

use crate::db::StoreError;

/// Per-field problems: the field's path (`pools[1].url`, `devices[0].threads`) → what is wrong.
pub type FieldErrors = BTreeMap<String, String>;

/// Why an operation did not happen. Nothing was changed when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The thing named does not exist (`what` says which: "rig", "profile"…).
    #[error("{0} not found")]
    NotFound(String),
    /// The input is wrong; `code` names what was checked (`invalid_config`, `invalid_profile`…).
    #[error("{}", summary(fields))]
    Invalid {
        /// Stable code for programs.
        code: &'static str,
        /// Per-field problems.
        fields: FieldErrors,
    },
    /// The request as a whole makes no sense (no field to point at).
    #[error("{0}")]
    BadRequest(String),
    /// The change clashes with the current state (a name in use, a profile still used…).
    #[error("{0}")]
    Conflict(String),
    /// The actor lacks the permission.
    #[error("{0}")]
    Forbidden(String),
    /// The change needs the password again (or an API token).
    #[error("{0}")]
    ReauthRequired(String),
    /// The database (or another dependency) did not answer; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// Stored data could not be read: a bug or a damaged database, not the caller's fault.
    #[error("{0}")]
    Internal(String),
}

impl FleetError {
    /// A not-found error for `what`.
    pub fn not_found(what: &str) -> FleetError {
        FleetError::NotFound(what.to_string())
    }

    /// One field's problem.
    pub fn field(code: &'static str, field: &str, problem: impl Into<String>) -> FleetError {
        let mut fields = FieldErrors::new();
        fields.insert(field.to_string(), problem.into());
        FleetError::Invalid { code, fields }
    }

    /// Problems found in several fields (`Ok` when there are none).
    pub fn check(code: &'static str, fields: FieldErrors) -> Result<(), FleetError> {
        if fields.is_empty() {
            Ok(())
        } else {
            Err(FleetError::Invalid { code, fields })
        }
    }
}

/// `field: problem; field: problem` (for messages and for the dashboard's error page).
pub fn summary(fields: &FieldErrors) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<StoreError> for FleetError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => FleetError::NotFound("record".into()),
            StoreError::Conflict(m) => FleetError::Conflict(m),
            StoreError::Invalid(m) => FleetError::BadRequest(m),
            StoreError::Database(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                FleetError::Conflict("a record with that name already exists".into())
            }
            StoreError::Database(sqlx::Error::Database(db))
                if db.is_foreign_key_violation() || db.is_check_violation() =>
            {
                tracing::warn!(error = %db, "Refused by a database constraint");
                FleetError::Conflict(
                    "the database refused the change (a record it needs or that needs it)".into(),
                )
            }
            StoreError::Corrupt(m) => {
                tracing::error!(error = %m, "Stored data could not be decoded");
                FleetError::Internal("stored data could not be read; see the server log".into())
            }
            other => {
                tracing::error!(error = %other, "Database error");
                FleetError::Unavailable("the database did not answer; retry later".into())
            }
        }
    }
}

/// An order (a config push, a command) that could not be stored or signed.
impl From<crate::hub::OrderError> for FleetError {
    fn from(e: crate::hub::OrderError) -> Self {
        match e {
            crate::hub::OrderError::Store(s) => s.into(),
            crate::hub::OrderError::Encode(m) => {
                tracing::error!(error = %m, "An order could not be encoded");
                FleetError::Internal(m)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_keep_their_meaning() {
        assert!(matches!(
            FleetError::from(StoreError::NotFound),
            FleetError::NotFound(_)
        ));
        assert!(matches!(
            FleetError::from(StoreError::Conflict("x".into())),
            FleetError::Conflict(_)
        ));
        assert!(matches!(
            FleetError::from(StoreError::Invalid("x".into())),
            FleetError::BadRequest(_)
        ));
        assert!(matches!(
            FleetError::from(StoreError::Corrupt("x".into())),
            FleetError::Internal(_)
        ));
        assert!(matches!(
            FleetError::from(StoreError::Database(sqlx::Error::PoolTimedOut)),
            FleetError::Unavailable(_)
        ));
    }

    #[test]
    fn field_errors_read_as_a_summary() {
        let e = FleetError::field("invalid_profile", "pools[0].url", "not a stratum URL");
        assert_eq!(e.to_string(), "pools[0].url: not a stratum URL");
        assert!(FleetError::check("x", FieldErrors::new()).is_ok());
    }
}

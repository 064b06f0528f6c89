//! Ids that travel between agent and server. They are plain strings on the wire, checked for
//! length and a conservative character set, because they end up in database keys, Prometheus
//! labels and HTML.

use serde::{Deserialize, Serialize};

use crate::error::ProtoError;
use crate::limits::MAX_ID_LEN;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// Checks length and characters.
            pub fn validate(&self, field: &'static str) -> Result<(), ProtoError> {
                validate_id(&self.0, field)
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_string())
            }
        }
    };
}

id_type!(
    /// A rig, assigned by the server at enrollment; stable for the rig's life.
    RigId
);
id_type!(
    /// An agent (one process, one key pair), assigned at enrollment.
    AgentId
);
id_type!(
    /// A device's stable id on its rig: a PCI bus id, a USB path or serial, an IP or MAC, or `cpu`.
    DeviceId
);
id_type!(
    /// A command, assigned by the server, echoed in its result.
    CommandId
);

/// Ids are 1 to [`MAX_ID_LEN`] bytes of ASCII letters, digits and `. _ - : / @`.
pub fn validate_id(s: &str, field: &'static str) -> Result<(), ProtoError> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(ProtoError::invalid(
            field,
            format!("length must be 1 to {MAX_ID_LEN}"),
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@')))
    {
        return Err(ProtoError::invalid(
            field,
            format!("character {c:?} not allowed"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_real_device_names_and_refuse_markup() {
        for ok in [
            "cpu",
            "0000:01:00.0",
            "usb-1-1.4",
            "192.168.1.20",
            "aa:bb:cc:dd:ee:ff",
            "rig_01@farm",
        ] {
            assert!(validate_id(ok, "id").is_ok(), "{ok}");
        }
        for bad in ["", "<script>", "a b", "é", &"x".repeat(MAX_ID_LEN + 1)] {
            assert!(validate_id(bad, "id").is_err(), "{bad}");
        }
    }
}

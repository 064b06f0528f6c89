//! Commands the server sends to one rig, inside a signed order.

use serde::{Deserialize, Serialize};

use crate::error::ProtoError;
use crate::ids::CommandId;
use crate::limits::{MAX_NAME_LEN, MAX_TEXT_LEN};
use crate::validate::check_len;

/// A command with the id its result will carry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandOrder {
    /// Server-assigned id.
    pub command_id: CommandId,
    /// What to do.
    pub command: Command,
}

/// What a rig can be told to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Restart the miner on the current config.
    RestartMining,
    /// Reboot the machine (only when the rig's local config allows it).
    Reboot,
    /// Make the rig findable (blink LEDs where possible, log a banner).
    Identify {
        /// How long.
        seconds: u32,
    },
    /// Measure the engine and report the figures.
    RunBenchmark {
        /// Algorithm id.
        algorithm: String,
        /// Seconds to run.
        seconds: u32,
    },
    /// Move to the pool at this position of the current config now.
    SwitchPool {
        /// Index into the config's pool list.
        index: u32,
    },
    /// Run a shell command (only when the rig's local config opts in).
    Shell {
        /// The command line.
        command: String,
    },
}

impl CommandOrder {
    /// Checks ids and bounds.
    pub fn validate(&self) -> Result<(), ProtoError> {
        self.command_id.validate("command_id")?;
        match &self.command {
            Command::RunBenchmark { algorithm, .. } => {
                check_len("algorithm", algorithm, MAX_NAME_LEN)
            }
            Command::Shell { command } => check_len("command", command, MAX_TEXT_LEN),
            _ => Ok(()),
        }
    }
}

//! Fuzz harness for the agent protocol (`decode_frames`): every frame either side decodes, and
//! the payloads of signed orders. Shared by the fuzz target and `proto/tests/fuzz_corpus.rs`,
//! so the stable replay runs exactly what the fuzzer ran.
//!
//! Oracles besides "no panic": whatever decodes re-encodes and decodes to the same value.

use rigfleet_proto::command::CommandOrder;
use rigfleet_proto::config::DesiredConfig;
use rigfleet_proto::signing::SignedOrder;
use rigfleet_proto::{decode_agent, decode_server, encode_agent, encode_server};

/// One input: a frame as the server reads it from an agent, as an agent reads it from the
/// server, and as an order payload (desired config, command, signed envelope).
pub fn decode_frames(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(msg) = decode_agent(text) {
        let again = encode_agent(&msg).expect("a decoded agent frame encodes");
        assert_eq!(
            decode_agent(&again).expect("a re-encoded agent frame decodes"),
            msg
        );
    }
    if let Ok(msg) = decode_server(text) {
        let again = encode_server(&msg).expect("a decoded server frame encodes");
        assert_eq!(
            decode_server(&again).expect("a re-encoded server frame decodes"),
            msg
        );
    }
    if let Ok(order) = serde_json::from_str::<SignedOrder>(text) {
        let _ = order.validate();
    }
    if let Ok(config) = serde_json::from_str::<DesiredConfig>(text) {
        let _ = config.validate();
        let _ = config.field_errors();
        let _ = config.content_hash();
    }
    if let Ok(command) = serde_json::from_str::<CommandOrder>(text) {
        let _ = command.validate();
    }
}

//! Fuzz harness for the agent protocol (`decode_frames`): every frame either side decodes, the
//! payloads of signed orders, and enrollment (the unauthenticated request body the server reads,
//! the token text an agent is given) and pool URLs. Shared by the fuzz target and `proto/tests/fuzz_corpus.rs`,
//! so the stable replay runs exactly what the fuzzer ran.
//!
//! Oracles besides "no panic": whatever decodes re-encodes and decodes to the same value.

use rigfleet_proto::command::CommandOrder;
use rigfleet_proto::config::DesiredConfig;
use rigfleet_proto::enroll::{EnrollRequest, EnrollToken};
use rigfleet_proto::pool_url::PoolUrl;
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
    if let Ok(request) = serde_json::from_str::<EnrollRequest>(text) {
        let _ = request.validate();
    }
    if let Ok(token) = EnrollToken::parse(text) {
        let again = EnrollToken::parse(&token.to_text()).expect("a token's own text parses");
        assert!(again == token, "a token's text parses to the same token");
    }
    if let Ok(url) = text.parse::<PoolUrl>() {
        let shown = url.to_string();
        if let Err(e) = shown.parse::<PoolUrl>() {
            panic!("pool URL {text:?} shows as {shown:?}, which does not parse: {e}");
        }
    }
}

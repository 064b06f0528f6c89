//! Feeds arbitrary bytes to every decoder that reads network input: agent and server frames of
//! the agent protocol, and Stratum lines (both directions). None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = rigfleet_proto::decode_agent(text);
        let _ = rigfleet_proto::decode_server(text);
        if let Ok(rigfleet_stratum::Frame::Request { method, params, .. }) = rigfleet_stratum::Frame::parse(text) {
            let _ = rigfleet_stratum::ClientRequest::parse(&method, &params);
            let _ = rigfleet_stratum::ServerMessage::parse(&method, &params);
        }
    }
});

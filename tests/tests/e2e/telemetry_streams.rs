//! Telemetry streams and clocks over real sockets, on SQLite and PostgreSQL (issue 11, items 3,
//! 4 and 7): a protocol 1 agent is served as before, a protocol 2 agent gets a welcome time
//! signed over its nonce and acks that name its stream, a reset queue starts a new stream with
//! an event instead of being taken for resends, and a skewed agent clock is corrected and shown.

use ed25519_dalek::{Signature, VerifyingKey};
use rigfleet_proto::server_to_agent::ServerMessage;
use rigfleet_proto::signing::server_time_signing_bytes;
use rigfleet_tests::server::*;

async fn next_ack(ws: &mut Ws) -> (u64, Option<String>) {
    loop {
        match recv(ws).await {
            Some(ServerMessage::Ack(a)) => return (a.seq, a.stream_id),
            Some(_) => continue,
            None => panic!("link closed before an ack"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_signed_time_and_clock_offsets() {
    for ts in servers().await {
        let token = ts.enroll_token(r#"{"max_uses": 1}"#).await;
        let agent = FakeAgent::enroll(ts.addr(), &token, 1).await;
        let rig = agent.rig_ids[0].clone();
        let store = &ts.server.hub.store;
        let rig_row = store.rig_by_uid(rig.as_str()).await.unwrap().unwrap();
        let now = rigfleet_server::now_ms();

        // Protocol 1, as agents before streams speak it: acks without a stream, samples in the
        // rig's legacy stream.
        let mut ws = agent.connect(ts.addr()).await.unwrap();
        send(&mut ws, &telemetry(&rig, vec![sample(1, now - 5_000, 2)])).await;
        assert_eq!(next_ack(&mut ws).await, (1, None));
        drop(ws);

        // Protocol 2, clock an hour behind: the welcome's time is signed over our nonce with the
        // key we pinned, and the offset is what the handshake measured.
        let hour = 3_600_000;
        let (mut ws, welcome, nonce) = agent.connect_v2(ts.addr(), "queue-a", -hour).await.unwrap();
        let (time, sig) = (
            welcome.server_time_unix_ms.unwrap(),
            welcome.time_sig.unwrap(),
        );
        let key = VerifyingKey::from_bytes(&agent.server_key).unwrap();
        let sig =
            Signature::from_bytes(&rigfleet_proto::signing::decode_hex_array::<64>(&sig).unwrap());
        key.verify_strict(
            &server_time_signing_bytes(&nonce, &agent.agent_id, time),
            &sig,
        )
        .expect("welcome time signed by the pinned key over our nonce");
        assert!(
            (welcome.clock_offset_ms - hour).abs() < 5_000,
            "{}",
            welcome.clock_offset_ms
        );
        let agent_now = rigfleet_server::now_ms() - hour;
        send(
            &mut ws,
            &telemetry_in(
                &rig,
                "queue-a",
                vec![
                    sample(1, agent_now - 2_000, 2),
                    sample(2, agent_now - 1_000, 2),
                ],
            ),
        )
        .await;
        assert_eq!(next_ack(&mut ws).await, (2, Some("queue-a".into())));
        drop(ws);

        // The agent's queue was wiped: a new stream starting at 1 is stored, not taken for
        // resends of queue-a, and the operator hears about it.
        let (mut ws, _, _) = agent.connect_v2(ts.addr(), "queue-b", 0).await.unwrap();
        let t = rigfleet_server::now_ms();
        send(
            &mut ws,
            &telemetry_in(&rig, "queue-b", vec![sample(1, t - 1_000, 2)]),
        )
        .await;
        assert_eq!(next_ack(&mut ws).await, (1, Some("queue-b".into())));
        let seqs = store.stored_seqs(rig_row.id).await.unwrap();
        assert_eq!(
            seqs,
            [
                (String::new(), 1),
                ("queue-a".to_string(), 1),
                ("queue-a".to_string(), 2),
                ("queue-b".to_string(), 1)
            ]
        );
        // Events are written in batches: wait for it (generously).
        let mut found = false;
        for _ in 0..100 {
            let events = store.list_events(Some(rig_row.id), 50, None).await.unwrap();
            if events.iter().any(|e| e.kind == "telemetry_stream_started") {
                found = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(found, "no telemetry_stream_started event");
        // queue-a's samples were stored on the server's clock, not an hour back.
        let times = store.raw_times(rig_row.id).await.unwrap();
        for (_, ts_ms, agent_ts, flagged) in &times[1..3] {
            assert!(!flagged);
            assert!((ts_ms - agent_ts - hour).abs() < 5_000, "{times:?}");
            assert!(
                (rigfleet_server::now_ms() - ts_ms).abs() < 60_000,
                "{times:?}"
            );
        }
        drop(ws);
        ts.finish().await;
    }
}

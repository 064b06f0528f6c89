//! Fuzz harnesses for Stratum (`stratum_lines`, `stratum_job`). Shared by the fuzz targets and
//! `stratum/tests/fuzz_corpus.rs`, so the stable replay runs exactly what the fuzzer ran.
//!
//! Input is what a socket delivers: bytes, cut into lines by the session's own codec.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use rigfleet_engine::device::DeviceId;
use rigfleet_engine::{Algorithm, Difficulty, Share, Target};
use rigfleet_stratum::codec::read_line;
use rigfleet_stratum::job::{self, MAX_NTIME_ROLL_SECS};
use rigfleet_stratum::job_book::{JobBook, JobSource};
use rigfleet_stratum::message::{
    ClientRequest, ConfigureResult, Frame, Notify, ServerMessage, StratumError, SubscribeResult,
};
use rigfleet_stratum::pool::template::{BlockTemplate, Job, EXTRANONCE1_SIZE};
use rigfleet_stratum::pool::validate::{check_share, rolled_version, ShareContext};
use rigfleet_stratum::session::REQUESTED_VERSION_MASK;
use rigfleet_stratum::JobTemplate;

/// The lines the session's codec reads from these bytes, up to its first framing error. A
/// `&[u8]` behind a small `BufReader` is always ready, so one poll finishes each read.
fn lines_of(data: &[u8]) -> Vec<String> {
    let mut reader = tokio::io::BufReader::with_capacity(61, data);
    let mut out = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        let mut line = String::new();
        let read = pin!(read_line(&mut reader, &mut line)).poll(&mut cx);
        match read {
            Poll::Ready(Ok(true)) => out.push(line),
            Poll::Ready(Ok(false) | Err(_)) => return out,
            Poll::Pending => unreachable!("an in-memory reader is always ready"),
        }
    }
}

/// The pool's job that fuzzed submits are checked against (built once).
fn pool_job() -> &'static Job {
    static JOB: OnceLock<Job> = OnceLock::new();
    JOB.get_or_init(|| {
        let block = Arc::new(BlockTemplate::synthetic(800_000, 0x1d00_ffff));
        Job::new(7, 1, block, 4, 0x6500_0000, true)
    })
}

/// `stratum_lines`: every line as the client reads it from a pool (notifications, requests and
/// the results of its own requests) and as the pool reads it from a miner (requests; submits
/// are checked against a real job, as the pool does).
pub fn lines(data: &[u8]) {
    for line in lines_of(data) {
        match Frame::parse(&line) {
            Err(_) => {}
            Ok(Frame::Request { method, params, .. }) => {
                // Client side.
                if let Ok(ServerMessage::Notify(n)) = ServerMessage::parse(&method, &params) {
                    assert_eq!(Notify::parse(&n.params()).expect("notify re-parses"), n);
                }
                // Pool side.
                if let Ok(request) = ClientRequest::parse(&method, &params) {
                    let _ = request.to_line(1);
                    if let ClientRequest::Submit(submit) = &request {
                        let again = Frame::parse(&request.to_line(9)).expect("own line parses");
                        let Frame::Request { method, params, .. } = again else {
                            panic!("own request line is a request");
                        };
                        assert_eq!(
                            ClientRequest::parse(&method, &params).expect("submit re-parses"),
                            request
                        );
                        let ctx = ShareContext {
                            algorithm: Algorithm::Sha256d,
                            extranonce1: &[1, 2, 3, 4][..EXTRANONCE1_SIZE],
                            extranonce2_size: 4,
                            version_mask: REQUESTED_VERSION_MASK,
                            now_unix: 0x6500_0100,
                        };
                        let target = Target::from_difficulty(
                            Algorithm::Sha256d,
                            Difficulty::new(1e-9).expect("positive"),
                        );
                        let _ = check_share(&ctx, pool_job(), submit, &target);
                    }
                }
            }
            Ok(Frame::Response { result, error, .. }) => {
                let _ = SubscribeResult::parse(&result).map(|s| s.to_value());
                let _ = ConfigureResult::parse(&result).map(|c| c.to_value());
                if let Some(e) = error {
                    let _ = e.to_string();
                }
                let _ = StratumError::from_value(&result).to_string();
            }
        }
    }
}

/// What a client session knows when a job arrives.
struct SessionState {
    extranonce1: Vec<u8>,
    extranonce2_size: usize,
    difficulty: f64,
    version_mask: u32,
}

/// `stratum_job`: a pool's side of a session (subscribe and configure results, difficulty,
/// extranonce and mask changes, jobs); every job is built into engine work as the session does,
/// and every work's share into the `mining.submit` that rebuilds exactly the header hashed.
pub fn job(data: &[u8]) {
    let mut state = SessionState {
        extranonce1: vec![0xf0, 0x0d, 0xca, 0xfe],
        extranonce2_size: 4,
        difficulty: 1.0,
        version_mask: 0,
    };
    let mut book = JobBook::default();
    for line in lines_of(data) {
        match Frame::parse(&line) {
            Ok(Frame::Response { result, .. }) => {
                if let Ok(s) = SubscribeResult::parse(&result) {
                    state.extranonce1 = s.extranonce1;
                    state.extranonce2_size = s.extranonce2_size;
                }
                if let Ok(c) = ConfigureResult::parse(&result) {
                    state.version_mask =
                        c.version_rolling_mask.unwrap_or(0) & REQUESTED_VERSION_MASK;
                }
            }
            Ok(Frame::Request { method, params, .. }) => {
                match ServerMessage::parse(&method, &params) {
                    Ok(ServerMessage::SetDifficulty(d)) => state.difficulty = d,
                    Ok(ServerMessage::SetExtranonce {
                        extranonce1,
                        extranonce2_size,
                    }) => {
                        state.extranonce1 = extranonce1;
                        state.extranonce2_size = extranonce2_size;
                    }
                    Ok(ServerMessage::SetVersionMask(m)) => {
                        state.version_mask = m & REQUESTED_VERSION_MASK
                    }
                    Ok(ServerMessage::Notify(notify)) => build_job(&state, notify, &mut book),
                    _ => {}
                }
            }
            Err(_) => {}
        }
    }
}

fn build_job(state: &SessionState, notify: Notify, book: &mut JobBook) {
    let clean = notify.clean_jobs;
    // As the session: a difficulty the parser let through, or the protocol default.
    let difficulty = Difficulty::new(state.difficulty)
        .or_else(|_| Difficulty::new(1.0))
        .expect("1.0 is a valid difficulty");
    for algorithm in [Algorithm::Sha256d, Algorithm::Scrypt] {
        let template = JobTemplate {
            notify: notify.clone(),
            extranonce1: state.extranonce1.clone(),
            extranonce2_size: state.extranonce2_size,
            algorithm,
            target: Target::from_difficulty(algorithm, difficulty),
            version_mask: state.version_mask,
        };
        let space = template.extranonce2_space();
        let max_roll = u64::from(MAX_NTIME_ROLL_SECS);
        let tags = [
            0,
            1,
            space - 1,
            space,
            space.saturating_mul(max_roll),
            space.saturating_mul(max_roll).saturating_add(space - 1),
            space.saturating_mul(max_roll + 1),
            u64::MAX,
        ];
        for tag in tags {
            let (offset, fits) = if space == u64::MAX {
                (0, true)
            } else {
                let offset = tag / space;
                (offset, offset <= max_roll)
            };
            let Some(work) = template.work(tag) else {
                assert!(!fits, "tag {tag} is within the ntime roll but gave no work");
                continue;
            };
            assert!(fits, "tag {tag} rolls ntime past the limit");
            assert_eq!(work.version(), notify.version);
            assert_eq!(work.nbits(), notify.nbits);
            assert_eq!(work.ntime(), notify.ntime.wrapping_add(offset as u32));
            submit_rebuilds_the_header(&template, work, tag);
        }
        let template = Arc::new(template);
        let key = book.insert(1, 0, Arc::clone(&template), clean);
        let mut source = JobSource::new(template, key, Arc::new(Default::default()));
        let _ = rigfleet_engine::WorkSource::next_work(&mut source);
    }
}

/// The miner's `mining.submit` for a share on this work must let a pool rebuild the very header
/// the miner hashed (coinbase with the same extranonce2, same ntime, version and nonce).
fn submit_rebuilds_the_header(template: &JobTemplate, work: rigfleet_engine::Work, tag: u64) {
    let nonce = (tag as u32).rotate_left(7) ^ 0x5a5a_5a5a;
    let mask = template.version_mask;
    let version = (work.version() & !mask) | (0x0bad_cafe & mask);
    let work = work.with_version(version);
    let header = work.header_with_nonce(nonce);
    let share = Share {
        device: DeviceId("fuzz".into()),
        nonce,
        version,
        header,
        // `submit` does not read the hash; Scrypt would cost milliseconds per execution.
        hash: [0; 32],
        work: Arc::new(work),
    };
    let submit = template.submit("w", &share);
    assert_eq!(submit.extranonce2.len(), template.extranonce2_size);
    let rolled = rolled_version(template.notify.version, mask, submit.version_bits)
        .expect("own version bits are within the mask");
    let coinbase = job::coinbase(&template.notify, &template.extranonce1, &submit.extranonce2);
    let root = job::merkle_root(&coinbase, &template.notify.merkle_branch);
    let rebuilt = job::header(&template.notify, &root, rolled, submit.ntime, submit.nonce);
    assert_eq!(
        rebuilt, header,
        "the submit does not rebuild the hashed header"
    );
    let line = ClientRequest::Submit(submit.clone()).to_line(4);
    let Ok(Frame::Request { method, params, .. }) = Frame::parse(&line) else {
        panic!("own submit line does not parse");
    };
    assert_eq!(
        ClientRequest::parse(&method, &params).expect("own submit re-parses"),
        ClientRequest::Submit(submit)
    );
}

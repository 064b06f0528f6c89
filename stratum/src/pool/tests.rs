//! The pool over real loopback sockets, driven by a raw JSON client: every answer code, the job
//! life cycle, version rolling, vardiff, limits and control actions. Shares are found by brute
//! force with the engine's portable hash at tiny difficulties (2^-16 for SHA-256d: ~65,000
//! hashes a share; 2^-12 for Scrypt: ~16), so the suite stays fast.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use rigfleet_engine::{Algorithm, Difficulty, Target};

use super::validate::tests::find_nonce;
use super::*;
use crate::codec;
use crate::job;
use crate::message::{Notify, StratumError};

/// 2^-16: a SHA-256d share every 65,536 hashes on average.
const SHA_DIFF: f64 = 1.0 / 65536.0;
/// How long a test waits for any one line before failing.
const LINE_WAIT: Duration = Duration::from_secs(5);

fn config(algorithm: Algorithm, difficulty: f64) -> PoolConfig {
    let mut c = PoolConfig::new(algorithm);
    c.difficulty = Difficulty::new(difficulty).unwrap();
    // Jobs only on demand, so tests see exactly the jobs they make.
    c.job_interval = None;
    c
}

async fn start(c: PoolConfig) -> PoolHandle {
    Pool::bind(c).await.expect("pool starts")
}

type Reader = BufReader<Box<dyn AsyncRead + Send + Unpin>>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A miner that speaks raw JSON lines: requests get their answers by id, and notifications
/// that arrive in between are kept for later.
struct RawClient {
    reader: Reader,
    writer: Writer,
    next_id: u64,
    notifications: VecDeque<(String, Value)>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::over(stream)
    }

    fn over<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Self {
        let (r, w) = tokio::io::split(stream);
        let r: Box<dyn AsyncRead + Send + Unpin> = Box::new(r);
        Self {
            reader: BufReader::new(r),
            writer: Box::new(w),
            next_id: 1,
            notifications: VecDeque::new(),
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    async fn send(&mut self, v: Value) {
        let mut line = v.to_string();
        line.push('\n');
        self.send_raw(line.as_bytes()).await;
    }

    /// The next line as JSON; `None` when the pool closed the connection.
    async fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match tokio::time::timeout(LINE_WAIT, codec::read_line(&mut self.reader, &mut line)).await {
            Ok(Ok(true)) => Some(serde_json::from_str(&line).expect("pool sends JSON")),
            Ok(Ok(false)) | Ok(Err(_)) => None,
            Err(_) => panic!("no line from the pool within {LINE_WAIT:?}"),
        }
    }

    /// Waits for the pool to close the connection (EOF or reset), skipping what it still sends.
    async fn expect_closed(&mut self) {
        while let Some(v) = self.recv().await {
            if v.get("method").is_none() {
                panic!("unexpected response while waiting for close: {v}");
            }
        }
    }

    /// Sends a request and returns its response (`result`, `error`).
    async fn request(&mut self, method: &str, params: Value) -> (Value, Value) {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"id": id, "method": method, "params": params}))
            .await;
        loop {
            let v = self.recv().await.expect("connection open");
            if let Some(m) = v.get("method").and_then(Value::as_str) {
                self.notifications
                    .push_back((m.to_string(), v["params"].clone()));
                continue;
            }
            assert_eq!(v["id"], json!(id), "answers come in order: {v}");
            return (v["result"].clone(), v["error"].clone());
        }
    }

    /// The params of the next notification with this method (earlier other ones are dropped).
    async fn notification(&mut self, method: &str) -> Value {
        while let Some((m, p)) = self.notifications.pop_front() {
            if m == method {
                return p;
            }
        }
        loop {
            let v = self.recv().await.expect("connection open");
            if v["method"] == json!(method) {
                return v["params"].clone();
            }
        }
    }

    async fn notify(&mut self) -> Notify {
        Notify::parse(&self.notification("mining.notify").await).expect("valid notify")
    }

    async fn submit(&mut self, share: &Share) -> (Value, Value) {
        let mut p = vec![
            json!(share.worker),
            json!(share.job_id),
            json!(rigfleet_engine::hex::encode(&share.extranonce2)),
            json!(format!("{:08x}", share.ntime)),
            json!(format!("{:08x}", share.nonce)),
        ];
        if let Some(v) = share.version_bits {
            p.push(json!(format!("{v:08x}")));
        }
        self.request("mining.submit", Value::Array(p)).await
    }
}

/// A subscribed and authorized miner with what the pool told it.
struct Miner {
    client: RawClient,
    extranonce1: Vec<u8>,
    extranonce2_size: usize,
    difficulty: f64,
    job: Notify,
}

async fn miner(pool: &PoolHandle) -> Miner {
    let client = RawClient::connect(pool.local_addr()).await;
    miner_over(client).await
}

async fn miner_over(mut client: RawClient) -> Miner {
    let (result, error) = client
        .request("mining.subscribe", json!(["test/1.0"]))
        .await;
    assert_eq!(error, Value::Null);
    let sub = crate::message::SubscribeResult::parse(&result).expect("subscribe result");
    let (ok, _) = client
        .request("mining.authorize", json!(["w.1", "x"]))
        .await;
    assert_eq!(ok, json!(true));
    let difficulty = client.notification("mining.set_difficulty").await[0]
        .as_f64()
        .unwrap();
    let job = client.notify().await;
    assert!(job.clean_jobs, "the first job of a connection is clean");
    Miner {
        client,
        extranonce1: sub.extranonce1,
        extranonce2_size: sub.extranonce2_size,
        difficulty,
        job,
    }
}

/// What a miner submits.
#[derive(Clone, Debug)]
struct Share {
    worker: String,
    job_id: String,
    extranonce2: Vec<u8>,
    ntime: u32,
    nonce: u32,
    version_bits: Option<u32>,
}

/// Finds a share the way a miner does (job.rs builds the header), meeting or missing `target`.
#[allow(clippy::too_many_arguments)]
fn solve(
    algorithm: Algorithm,
    job: &Notify,
    en1: &[u8],
    en2: &[u8],
    version: u32,
    version_bits: Option<u32>,
    target: &Target,
    meets: bool,
    start: u32,
) -> Share {
    let root = job::merkle_root(&job::coinbase(job, en1, en2), &job.merkle_branch);
    let base = job::header(job, &root, version, job.ntime, 0);
    let header_for = |n: u32| {
        let mut h = base;
        h[76..].copy_from_slice(&n.to_le_bytes());
        h
    };
    let nonce = find_nonce(algorithm, header_for, target, meets, start);
    Share {
        worker: "w.1".into(),
        job_id: job.job_id.clone(),
        extranonce2: en2.to_vec(),
        ntime: job.ntime,
        nonce,
        version_bits,
    }
}

impl Miner {
    fn target(&self, algorithm: Algorithm) -> Target {
        Target::from_difficulty(algorithm, Difficulty::new(self.difficulty).unwrap())
    }

    fn en2(&self, fill: u8) -> Vec<u8> {
        vec![fill; self.extranonce2_size]
    }

    /// A valid share for the current job (no version rolling).
    fn share(&self, algorithm: Algorithm, fill: u8, start: u32) -> Share {
        solve(
            algorithm,
            &self.job,
            &self.extranonce1,
            &self.en2(fill),
            self.job.version,
            None,
            &self.target(algorithm),
            true,
            start,
        )
    }
}

fn error_code(error: &Value) -> Option<i64> {
    error.get(0).and_then(Value::as_i64)
}

#[tokio::test]
async fn pool_accepts_a_valid_sha256d_share_and_credits_its_worker() {
    let pool = start(config(Algorithm::Sha256d, SHA_DIFF)).await;
    let mut m = miner(&pool).await;
    assert_eq!(m.difficulty, SHA_DIFF);
    assert_eq!(m.extranonce1.len(), 4);
    assert_eq!(m.extranonce2_size, 4);
    assert!(m.job.merkle_branch.len() >= 3);
    let share = m.share(Algorithm::Sha256d, 1, 0);
    let (result, error) = m.client.submit(&share).await;
    assert_eq!((result, error), (json!(true), Value::Null));
    let stats = pool.stats();
    let w = stats.worker("w.1");
    assert_eq!(w.accepted, 1);
    assert_eq!(w.rejected_total(), 0);
    assert_eq!(w.accepted_work, SHA_DIFF);
    assert!(w.best_share_difficulty >= SHA_DIFF);
    assert_eq!(stats.internal_errors, 0);
    assert_eq!(stats.connections, 1);
}

#[tokio::test]
async fn pool_accepts_a_valid_scrypt_share_and_refuses_a_low_one() {
    let diff = 1.0 / 4096.0;
    let pool = start(config(Algorithm::Scrypt, diff)).await;
    let mut m = miner(&pool).await;
    let share = m.share(Algorithm::Scrypt, 1, 0);
    assert_eq!(m.client.submit(&share).await.0, json!(true));
    let low = solve(
        Algorithm::Scrypt,
        &m.job,
        &m.extranonce1,
        &m.en2(2),
        m.job.version,
        None,
        &m.target(Algorithm::Scrypt),
        false,
        0,
    );
    let (_, error) = m.client.submit(&low).await;
    assert_eq!(error_code(&error), Some(StratumError::LOW_DIFFICULTY));
    let w = pool.stats().worker("w.1");
    assert_eq!((w.accepted, w.rejected_with(23)), (1, 1));
}

#[tokio::test]
async fn pool_rejects_duplicates_unknown_jobs_and_low_difficulty() {
    let pool = start(config(Algorithm::Sha256d, SHA_DIFF)).await;
    let mut m = miner(&pool).await;
    let share = m.share(Algorithm::Sha256d, 1, 0);
    assert_eq!(m.client.submit(&share).await.0, json!(true));
    let (_, error) = m.client.submit(&share).await;
    assert_eq!(error_code(&error), Some(StratumError::DUPLICATE));

    let mut unknown = share.clone();
    unknown.job_id = "ffffff".into();
    let (_, error) = m.client.submit(&unknown).await;
    assert_eq!(error_code(&error), Some(StratumError::JOB_NOT_FOUND));

    let low = solve(
        Algorithm::Sha256d,
        &m.job,
        &m.extranonce1,
        &m.en2(3),
        m.job.version,
        None,
        &m.target(Algorithm::Sha256d),
        false,
        0,
    );
    let (result, error) = m.client.submit(&low).await;
    assert_eq!(result, Value::Null);
    assert_eq!(error_code(&error), Some(StratumError::LOW_DIFFICULTY));

    // A valid share of the same nonce on another connection's extranonce1 is not valid here.
    let mut foreign = share.clone();
    foreign.extranonce2 = m.en2(9);
    let (_, error) = m.client.submit(&foreign).await;
    assert_eq!(error_code(&error), Some(StratumError::LOW_DIFFICULTY));

    let w = pool.stats().worker("w.1");
    assert_eq!(w.accepted, 1);
    assert_eq!(w.rejected_with(22), 1);
    assert_eq!(w.rejected_with(21), 1);
    assert_eq!(w.stale, 0, "an id that never existed is not stale");
    assert_eq!(w.rejected_with(23), 2);
}

#[tokio::test]
async fn new_block_sends_clean_jobs_and_makes_earlier_jobs_stale() {
    let pool = start(config(Algorithm::Sha256d, SHA_DIFF)).await;
    let mut m = miner(&pool).await;
    let old_share = m.share(Algorithm::Sha256d, 1, 0);
    let height_before = pool.stats().height;

    let id = pool.new_block();
    let job = m.client.notify().await;
    assert_eq!(job.job_id, id);
    assert!(job.clean_jobs);
    assert_ne!(
        job.prevhash, m.job.prevhash,
        "a new block has a new previous hash"
    );
    assert_eq!(pool.stats().height, height_before + 1);
    assert_eq!(pool.current_job(), job);

    let (_, error) = m.client.submit(&old_share).await;
    assert_eq!(error_code(&error), Some(StratumError::JOB_NOT_FOUND));
    m.job = job;
    let fresh = m.share(Algorithm::Sha256d, 1, 0);
    assert_eq!(m.client.submit(&fresh).await.0, json!(true));
    let w = pool.stats().worker("w.1");
    assert_eq!((w.accepted, w.stale, w.rejected_with(21)), (1, 1, 1));
}

#[tokio::test]
async fn periodic_jobs_are_not_clean_and_keep_earlier_jobs_valid() {
    let mut c = config(Algorithm::Sha256d, SHA_DIFF);
    c.job_interval = Some(Duration::from_millis(100));
    let pool = start(c).await;
    let mut m = miner(&pool).await;
    let next = m.client.notify().await;
    assert!(!next.clean_jobs);
    assert_ne!(next.job_id, m.job.job_id);
    assert_eq!(next.prevhash, m.job.prevhash, "same block");
    assert_ne!(next.coinb1, m.job.coinb1, "each job has its own coinbase");
    let share = m.share(Algorithm::Sha256d, 1, 0);
    assert_eq!(m.client.submit(&share).await.0, json!(true));
    // A new block's job is clean even with periodic jobs around it, and the ones after it are
    // on the new block.
    let id = pool.new_block();
    let clean = loop {
        let job = m.client.notify().await;
        if job.job_id == id {
            break job;
        }
        assert!(!job.clean_jobs);
    };
    assert!(clean.clean_jobs);
    let after = m.client.notify().await;
    assert!(!after.clean_jobs);
    assert_eq!(after.prevhash, clean.prevhash);
}

#[tokio::test]
async fn version_rolling_grants_the_intersection_and_checks_the_rolled_header() {
    let pool = start(config(Algorithm::Sha256d, SHA_DIFF)).await;
    let mut client = RawClient::connect(pool.local_addr()).await;
    let (result, _) = client
        .request(
            "mining.configure",
            json!([["version-rolling"], {"version-rolling.mask": "ffffffff", "version-rolling.min-bit-count": 2}]),
        )
        .await;
    assert_eq!(
        result,
        json!({"version-rolling": true, "version-rolling.mask": "1fffe000"})
    );
    let mut m = miner_over(client).await;
    let bits = 0x0000_6000;
    let version = (m.job.version & !DEFAULT_VERSION_MASK) | bits;
    let rolled = solve(
        Algorithm::Sha256d,
        &m.job,
        &m.extranonce1,
        &m.en2(1),
        version,
        Some(bits),
        &m.target(Algorithm::Sha256d),
        true,
        0,
    );
    assert_eq!(m.client.submit(&rolled).await.0, json!(true));

    // The same nonce claimed for the unrolled version is another header.
    let mut unrolled = rolled.clone();
    unrolled.version_bits = None;
    let (_, error) = m.client.submit(&unrolled).await;
    assert_eq!(error_code(&error), Some(StratumError::LOW_DIFFICULTY));

    let mut outside = rolled.clone();
    outside.version_bits = Some(0xe000_0000);
    let (_, error) = m.client.submit(&outside).await;
    assert_eq!(error_code(&error), Some(StratumError::OTHER));
    let w = pool.stats().worker("w.1");
    assert_eq!(
        (w.accepted, w.rejected_with(20), w.rejected_with(23)),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn version_rolling_is_refused_without_overlap_and_then_bits_are_errors() {
    let pool = start(config(Algorithm::Sha256d, SHA_DIFF)).await;
    let mut client = RawClient::connect(pool.local_addr()).await;
    let (result, _) = client
        .request(
            "mining.configure",
            json!([["version-rolling"], {"version-rolling.mask": "00000fff"}]),
        )
        .await;
    assert_eq!(result, json!({"version-rolling": false}));
    let (result, _) = client
        .request(
            "mining.configure",
            json!([["version-rolling"], {"version-rolling.mask": "1fffe000", "version-rolling.min-bit-count": 17}]),
        )
        .await;
    assert_eq!(
        result,
        json!({"version-rolling": false}),
        "16 bits < 17 wanted"
    );
    let mut m = miner_over(client).await;
    let mut share = m.share(Algorithm::Sha256d, 1, 0);
    share.version_bits = Some(0);
    let (_, error) = m.client.submit(&share).await;
    assert_eq!(error_code(&error), Some(StratumError::OTHER));
}

#[tokio::test]
async fn unauthorized_and_unsubscribed_submits_get_24_and_25() {
    let mut c = config(Algorithm::Sha256d, SHA_DIFF);
    c.auth = AuthPolicy::Password("secret".into());
    let pool = start(c).await;
    let share = Share {
        worker: "w.1".into(),
        job_id: pool.current_job().job_id,
        extranonce2: vec![0; 4],
        ntime: pool.current_job().ntime,
        nonce: 0,
        version_bits: None,
    };

    // Submit before subscribe.
    let mut client = RawClient::connect(pool.local_addr()).await;
    let (ok, _) = client
        .request("mining.authorize", json!(["w.1", "secret"]))
        .await;
    assert_eq!(ok, json!(true));
    let (_, error) = client.submit(&share).await;
    assert_eq!(error_code(&error), Some(StratumError::NOT_SUBSCRIBED));

    // Subscribed, wrong password: authorize says false, submits get 24.
    let mut client = RawClient::connect(pool.local_addr()).await;
    client.request("mining.subscribe", json!([])).await;
    let (ok, error) = client
        .request("mining.authorize", json!(["w.2", "x"]))
        .await;
    assert_eq!(ok, json!(false));
    assert_eq!(error_code(&error), Some(StratumError::UNAUTHORIZED));
    let mut other = share.clone();
    other.worker = "w.2".into();
    let (_, error) = client.submit(&other).await;
    assert_eq!(error_code(&error), Some(StratumError::UNAUTHORIZED));

    let stats = pool.stats();
    assert_eq!(stats.unattributed_rejects.get(&25), Some(&1));
    assert_eq!(stats.unattributed_rejects.get(&24), Some(&1));
    assert!(!stats.workers.contains_key("w.2"));
}

#[tokio::test]
async fn malformed_submits_get_20_and_count_against_the_worker() {
    let pool = start(config(Algorithm::Sha256d, SHA_DIFF)).await;
    let mut m = miner(&pool).await;
    let good = m.share(Algorithm::Sha256d, 1, 0);

    let mut short_en2 = good.clone();
    short_en2.extranonce2 = vec![1, 1, 1];
    let mut early = good.clone();
    early.ntime = good.ntime - 1;
    let mut far = good.clone();
    far.ntime = good.ntime + 100_000;
    for bad in [short_en2, early, far] {
        let (result, error) = m.client.submit(&bad).await;
        assert_eq!(result, Value::Null);
        assert_eq!(error_code(&error), Some(StratumError::OTHER), "{bad:?}");
    }
    for params in [
        json!(["w.1", good.job_id, "01010101", "zz", "00000000"]),
        json!(["w.1", good.job_id]),
        json!({"worker": "w.1"}),
    ] {
        let (_, error) = m.client.request("mining.submit", params.clone()).await;
        assert_eq!(error_code(&error), Some(StratumError::OTHER), "{params}");
    }
    // The good share still goes through afterwards.
    assert_eq!(m.client.submit(&good).await.0, json!(true));
    let w = pool.stats().worker("w.1");
    // The object-shaped params name no worker, so that one is unattributed.
    assert_eq!((w.accepted, w.rejected_with(20)), (1, 5));
    assert_eq!(pool.stats().unattributed_rejects.get(&20), Some(&1));
}

#[tokio::test]
async fn garbage_and_unknown_methods_are_answered_and_the_connection_survives() {
    let pool = start(config(Algorithm::Sha256d, SHA_DIFF)).await;
    let mut client = RawClient::connect(pool.local_addr()).await;
    client.send_raw(b"this is not json\n").await;
    let v = client.recv().await.unwrap();
    assert_eq!(v["id"], Value::Null);
    assert_eq!(error_code(&v["error"]), Some(StratumError::OTHER));
    client.send_raw(b"[1,2,3]\n\xff\xfe\n").await;
    assert!(client.recv().await.unwrap()["error"].is_array());
    assert!(client.recv().await.unwrap()["error"].is_array());

    let (result, error) = client.request("mining.bogus", json!([1])).await;
    assert_eq!(result, Value::Null);
    assert_eq!(error_code(&error), Some(StratumError::OTHER));
    // An unknown notification (null id) is not answered: the next answer is the subscribe's.
    client
        .send(json!({"id": null, "method": "mining.whatever", "params": []}))
        .await;
    // A response (the pool never asks) is ignored too.
    client
        .send(json!({"id": 99, "result": true, "error": null}))
        .await;
    let (result, error) = client.request("mining.subscribe", json!(["x"])).await;
    assert_eq!(error, Value::Null);
    assert!(result.is_array());
    // Extranonce subscription and difficulty suggestions are accepted.
    let (ok, _) = client
        .request("mining.extranonce.subscribe", json!([]))
        .await;
    assert_eq!(ok, json!(true));
    let stats = pool.stats();
    assert_eq!(stats.malformed_lines, 3);
    assert_eq!(stats.unknown_methods, 2);
}

#[tokio::test]
async fn an_oversize_line_closes_the_connection() {
    let pool = start(config(Algorithm::Sha256d, SHA_DIFF)).await;
    let mut client = RawClient::connect(pool.local_addr()).await;
    let big = vec![b'a'; codec::MAX_LINE_BYTES + 1024];
    // The pool may close before it has read everything; a failed write is fine.
    let _ = client.writer.write_all(&big).await;
    client.expect_closed().await;
    let stats = pool
        .wait_for_stats(LINE_WAIT, |s| s.connections == 0)
        .await
        .expect("connection gone");
    assert_eq!(stats.malformed_lines, 1);
    // The pool still serves others.
    let mut m = miner(&pool).await;
    let share = m.share(Algorithm::Sha256d, 1, 0);
    assert_eq!(m.client.submit(&share).await.0, json!(true));
}

#[tokio::test]
async fn a_stream_of_garbage_gets_the_connection_closed() {
    let pool = start(config(Algorithm::Sha256d, SHA_DIFF)).await;
    let mut client = RawClient::connect(pool.local_addr()).await;
    let garbage = "nope\n".repeat(MAX_MALFORMED_LINES as usize + 1);
    client.send_raw(garbage.as_bytes()).await;
    let mut answers = 0;
    while let Some(v) = client.recv().await {
        assert!(v["error"].is_array());
        answers += 1;
    }
    assert_eq!(answers, MAX_MALFORMED_LINES as usize);
}

#[tokio::test]
async fn vardiff_raises_the_difficulty_after_fast_shares() {
    let mut c = config(Algorithm::Sha256d, SHA_DIFF);
    c.vardiff = Some(VardiffConfig {
        target_share_secs: 10.0,
        retarget_shares: 3,
        retarget_after: Duration::from_secs(600),
        min_difficulty: Difficulty::new(2f64.powi(-24)).unwrap(),
        max_difficulty: Difficulty::new(1.0).unwrap(),
    });
    let pool = start(c).await;
    let mut m = miner(&pool).await;
    let mut start_nonce = 0;
    for _ in 0..3 {
        let share = m.share(Algorithm::Sha256d, 1, start_nonce);
        start_nonce = share.nonce + 1;
        assert_eq!(m.client.submit(&share).await.0, json!(true));
    }
    // Three shares in far less than 30 s: the difficulty goes up by the largest step.
    let d = m.client.notification("mining.set_difficulty").await[0]
        .as_f64()
        .unwrap();
    assert_eq!(d, SHA_DIFF * vardiff::MAX_STEP);
    // Shares of the job sent before the change are still accepted at the old difficulty.
    let share = m.share(Algorithm::Sha256d, 1, start_nonce);
    assert_eq!(m.client.submit(&share).await.0, json!(true));
    // A job sent after it needs the new difficulty.
    pool.new_job();
    m.job = m.client.notify().await;
    m.difficulty = SHA_DIFF;
    let mut easy_only = m.share(Algorithm::Sha256d, 2, 0);
    let hard = Target::from_difficulty(Algorithm::Sha256d, Difficulty::new(d).unwrap());
    while {
        let root = job::merkle_root(
            &job::coinbase(&m.job, &m.extranonce1, &easy_only.extranonce2),
            &m.job.merkle_branch,
        );
        let h = job::header(&m.job, &root, m.job.version, m.job.ntime, easy_only.nonce);
        hard.is_met_by(&Algorithm::Sha256d.hash(&h))
    } {
        easy_only = m.share(Algorithm::Sha256d, 2, easy_only.nonce + 1);
    }
    let (_, error) = m.client.submit(&easy_only).await;
    assert_eq!(error_code(&error), Some(StratumError::LOW_DIFFICULTY));
    assert_eq!(pool.stats().worker("w.1").accepted_work, 4.0 * SHA_DIFF);
}

#[tokio::test]
async fn suggested_difficulty_is_used_before_and_after_subscribe() {
    let pool = start(config(Algorithm::Sha256d, SHA_DIFF)).await;
    let mut client = RawClient::connect(pool.local_addr()).await;
    let (ok, _) = client
        .request("mining.suggest_difficulty", json!([0.5]))
        .await;
    assert_eq!(ok, json!(true));
    let mut m = miner_over(client).await;
    assert_eq!(m.difficulty, 0.5);
    let (ok, _) = m
        .client
        .request("mining.suggest_difficulty", json!([0.25]))
        .await;
    assert_eq!(ok, json!(true));
    let d = m.client.notification("mining.set_difficulty").await;
    assert_eq!(d, json!([0.25]));
    let (_, error) = m
        .client
        .request("mining.suggest_difficulty", json!([-1]))
        .await;
    assert_eq!(error_code(&error), Some(StratumError::OTHER));
    // The operator can set it too.
    pool.set_difficulty(Difficulty::new(0.125).unwrap());
    let d = m.client.notification("mining.set_difficulty").await;
    assert_eq!(d, json!([0.125]));
}

#[tokio::test]
async fn extranonce1_is_unique_and_rotates_on_request() {
    let pool = start(config(Algorithm::Sha256d, SHA_DIFF)).await;
    let mut a = miner(&pool).await;
    let b = miner(&pool).await;
    assert_ne!(a.extranonce1, b.extranonce1);
    let (ok, _) = a
        .client
        .request("mining.extranonce.subscribe", json!([]))
        .await;
    assert_eq!(ok, json!(true));
    let old_share = a.share(Algorithm::Sha256d, 1, 0);
    pool.rotate_extranonce();
    let p = a.client.notification("mining.set_extranonce").await;
    let new_en1 = rigfleet_engine::hex::decode(p[0].as_str().unwrap()).unwrap();
    assert_ne!(new_en1, a.extranonce1);
    assert_ne!(new_en1, b.extranonce1);
    assert_eq!(p[1], json!(4));
    let job = a.client.notify().await;
    assert!(job.clean_jobs);
    // Work on the old extranonce1 is void.
    let (_, error) = a.client.submit(&old_share).await;
    assert_eq!(error_code(&error), Some(StratumError::JOB_NOT_FOUND));
    a.extranonce1 = new_en1;
    a.job = job;
    let share = a.share(Algorithm::Sha256d, 1, 0);
    assert_eq!(a.client.submit(&share).await.0, json!(true));
}

#[tokio::test]
async fn reconnect_message_and_disconnect_reach_every_client() {
    let pool = start(config(Algorithm::Sha256d, SHA_DIFF)).await;
    let mut a = miner(&pool).await;
    let mut b = miner(&pool).await;
    pool.send_reconnect(Some("127.0.0.1".into()), Some(3334), 2);
    pool.show_message("maintenance");
    for m in [&mut a, &mut b] {
        assert_eq!(
            m.client.notification("client.reconnect").await,
            json!(["127.0.0.1", 3334, 2])
        );
        assert_eq!(
            m.client.notification("client.show_message").await,
            json!(["maintenance"])
        );
    }
    pool.disconnect_all();
    a.client.expect_closed().await;
    b.client.expect_closed().await;
    pool.wait_for_stats(LINE_WAIT, |s| s.connections == 0)
        .await
        .expect("all closed");
    // The listener stays open.
    let _c = miner(&pool).await;
}

#[tokio::test]
async fn tls_pool_serves_stratum_over_tls() {
    let identity = self_signed(&["localhost", "127.0.0.1"]).unwrap();
    let mut c = config(Algorithm::Sha256d, SHA_DIFF);
    c.tls = Some(identity.server_config.clone());
    let pool = start(c).await;
    assert!(pool.url().starts_with("stratum+ssl://127.0.0.1:"));
    assert!(identity
        .certificate_pem
        .starts_with("-----BEGIN CERTIFICATE-----"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(identity.certificate_der.clone()).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = TcpStream::connect(pool.local_addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let mut m = miner_over(RawClient::over(tls)).await;
    let share = m.share(Algorithm::Sha256d, 1, 0);
    assert_eq!(m.client.submit(&share).await.0, json!(true));

    // A plain-TCP client gets a TLS alert at most, and the connection closes.
    let mut plain = TcpStream::connect(pool.local_addr()).await.unwrap();
    plain
        .write_all(b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(LINE_WAIT, plain.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "closed within {LINE_WAIT:?}");
    assert!(!String::from_utf8_lossy(&answer).contains("result"));
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let mut c = config(Algorithm::Sha256d, SHA_DIFF);
    c.max_connections = 1;
    let pool = start(c).await;
    let _first = miner(&pool).await;
    let mut second = RawClient::connect(pool.local_addr()).await;
    second.expect_closed().await;
    assert_eq!(pool.stats().connections_refused, 1);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let mut c = config(Algorithm::Sha256d, SHA_DIFF);
    c.idle_timeout = Duration::from_millis(200);
    let pool = start(c).await;
    let mut m = miner(&pool).await;
    m.client.expect_closed().await;
    pool.wait_for_stats(LINE_WAIT, |s| s.connections == 0)
        .await
        .expect("counted as closed");
}

#[tokio::test]
async fn shutdown_closes_connections_and_the_listener() {
    let pool = start(config(Algorithm::Sha256d, SHA_DIFF)).await;
    let addr = pool.local_addr();
    let mut m = miner(&pool).await;
    pool.shutdown().await;
    m.client.expect_closed().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn bad_settings_and_busy_ports_are_errors() {
    let mut c = config(Algorithm::Sha256d, SHA_DIFF);
    c.extranonce2_size = 0;
    assert!(matches!(Pool::bind(c).await, Err(PoolError::Config(_))));
    let pool = start(config(Algorithm::Sha256d, SHA_DIFF)).await;
    let mut c = config(Algorithm::Sha256d, SHA_DIFF);
    c.listen = pool.local_addr().to_string();
    assert!(matches!(Pool::bind(c).await, Err(PoolError::Bind { .. })));
}

#[tokio::test]
async fn work_and_submits_built_by_job_rs_are_accepted_with_version_rolling() {
    // The client's path end to end, short of the engine's devices: JobTemplate turns the
    // notify into Work, the version is rolled the way the engine rolls it, and the Submit it
    // makes goes on the wire as ClientRequest::to_line writes it.
    use crate::job::JobTemplate;
    use crate::message::ClientRequest;
    use rigfleet_engine::work::deposit_bits;
    use rigfleet_engine::{DeviceId, Share as FoundShare};

    let pool = start(config(Algorithm::Sha256d, SHA_DIFF)).await;
    let mut client = RawClient::connect(pool.local_addr()).await;
    let (result, _) = client
        .request(
            "mining.configure",
            json!([["version-rolling"], {"version-rolling.mask": "1fffe000", "version-rolling.min-bit-count": 2}]),
        )
        .await;
    assert_eq!(result["version-rolling"], json!(true));
    let mut m = miner_over(client).await;
    let template = JobTemplate {
        notify: m.job.clone(),
        extranonce1: m.extranonce1.clone(),
        extranonce2_size: m.extranonce2_size,
        algorithm: Algorithm::Sha256d,
        target: m.target(Algorithm::Sha256d),
        version_mask: DEFAULT_VERSION_MASK,
    };
    for (tag, roll) in [(0u64, 0u64), (5, 3), (70_000, 0xffff)] {
        let base = template.work(tag).expect("within the ntime roll");
        let version =
            (base.version() & !DEFAULT_VERSION_MASK) | deposit_bits(roll, DEFAULT_VERSION_MASK);
        let work = Arc::new(base.with_version(version));
        let nonce = find_nonce(
            Algorithm::Sha256d,
            |n| work.header_with_nonce(n),
            &template.target,
            true,
            0,
        );
        let header = work.header_with_nonce(nonce);
        let found = FoundShare {
            device: DeviceId("cpu".into()),
            work: work.clone(),
            nonce,
            version,
            header,
            hash: Algorithm::Sha256d.hash(&header),
        };
        let mut submit = template.submit("w.1", &found);
        let line = ClientRequest::Submit(submit.clone()).to_line(1000 + tag);
        m.client.send_raw(format!("{line}\n").as_bytes()).await;
        let answer = loop {
            let v = m.client.recv().await.expect("open");
            if v.get("method").is_none() {
                break v;
            }
        };
        assert_eq!(answer["result"], json!(true), "tag {tag}: {answer}");
        // And the pool would notice a miner lying about the rolled bits.
        if roll != 0 {
            submit.version_bits = Some(0);
            let line = ClientRequest::Submit(submit).to_line(2000 + tag);
            m.client.send_raw(format!("{line}\n").as_bytes()).await;
            let answer = m.client.recv().await.expect("open");
            assert_eq!(
                error_code(&answer["error"]),
                Some(StratumError::LOW_DIFFICULTY)
            );
        }
    }
    assert_eq!(pool.stats().worker("w.1").accepted, 3);
}

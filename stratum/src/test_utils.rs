//! Test fixtures for the client side: a pool scripted step by step over an in-memory pipe
//! ([`ScriptedPool`]), a pool that runs by itself ([`AutoPool`]), and canned jobs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

use crate::message::{Frame, StratumError};

/// Longer than every timer the tests use, so that paused time never fires it first.
const WAIT: Duration = Duration::from_secs(3600);

/// The params of a `mining.notify` (the Stratum V1 documentation's example job) with another
/// job id and `clean_jobs`.
pub(crate) fn notify_params(job_id: &str, clean: bool) -> Value {
    let mut params = crate::message::server_to_client::tests::slush_doc_notify();
    params[0] = json!(job_id);
    params[8] = json!(clean);
    params
}

/// The pool end of a pipe, driven line by line by the test.
pub(crate) struct ScriptedPool {
    reader: BufReader<ReadHalf<DuplexStream>>,
    writer: WriteHalf<DuplexStream>,
}

impl ScriptedPool {
    pub(crate) fn new(stream: DuplexStream) -> Self {
        let (r, w) = tokio::io::split(stream);
        Self {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    /// The next JSON line from the client, `None` at end of stream.
    pub(crate) async fn try_recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
            .await
            .expect("client line in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        Some(serde_json::from_str(&line).expect("client sends JSON"))
    }

    pub(crate) async fn recv(&mut self) -> Value {
        self.try_recv().await.expect("client still connected")
    }

    /// The next line must be a request for `method`; returns its id and params.
    pub(crate) async fn expect(&mut self, method: &str) -> (Value, Value) {
        let v = self.recv().await;
        assert_eq!(v["method"], json!(method), "{v}");
        (v["id"].clone(), v["params"].clone())
    }

    pub(crate) async fn at_eof(&mut self) -> bool {
        self.try_recv().await.is_none()
    }

    pub(crate) async fn answer(&mut self, id: Value, result: Value) {
        self.send_line(&Frame::ok(id, result)).await;
    }

    pub(crate) async fn answer_error(&mut self, id: Value, error: StratumError) {
        self.send_line(&Frame::err(id, &error)).await;
    }

    pub(crate) async fn notify(&mut self, params: Value) {
        self.notify_method("mining.notify", params).await;
    }

    pub(crate) async fn notify_method(&mut self, method: &str, params: Value) {
        self.send_line(&Frame::request(Value::Null, method, params))
            .await;
    }

    pub(crate) async fn send_line(&mut self, line: &str) {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.send_raw(&bytes).await;
    }

    /// Writes bytes; a client that already hung up is not an error here.
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.writer.write_all(bytes).await;
        let _ = self.writer.flush().await;
    }
}

/// How an [`AutoPool`] behaves.
#[derive(Clone, Debug)]
pub(crate) struct AutoPoolScript {
    /// Answer `mining.authorize` with true.
    pub authorize: bool,
    /// Send a first job after authorizing.
    pub send_job: bool,
    /// The difficulty sent before the first job.
    pub difficulty: f64,
    /// The answer to every submit: `None` accepts, `Some(code)` rejects with that code.
    pub reject_with: Option<i64>,
    /// Prefix of job ids (to tell pools apart).
    pub job_prefix: String,
}

impl Default for AutoPoolScript {
    fn default() -> Self {
        Self {
            authorize: true,
            send_job: true,
            difficulty: 1.0,
            reject_with: None,
            job_prefix: "job".into(),
        }
    }
}

/// What an [`AutoPool`] saw.
#[derive(Debug, Default)]
pub(crate) struct AutoPoolLog {
    /// Methods in the order they came.
    pub methods: Vec<String>,
    /// Params of every subscribe.
    pub subscribes: Vec<Value>,
    /// Params of every submit.
    pub submits: Vec<Value>,
}

/// A pool that answers the handshake and submits by itself; the test pushes more lines through
/// a channel (`None` hangs up).
pub(crate) struct AutoPool;

impl AutoPool {
    /// Serves one connection until the client leaves or the control channel says so.
    pub(crate) async fn serve(
        stream: DuplexStream,
        script: AutoPoolScript,
        log: Arc<Mutex<AutoPoolLog>>,
        mut control: tokio::sync::mpsc::UnboundedReceiver<Option<String>>,
    ) {
        let mut pool = ScriptedPool::new(stream);
        let mut jobs = 0u32;
        let mut control_open = true;
        loop {
            tokio::select! {
                v = pool.try_recv() => {
                    let Some(v) = v else { return };
                    let method = v["method"].as_str().unwrap_or_default().to_string();
                    let id = v["id"].clone();
                    log.lock().unwrap().methods.push(method.clone());
                    match method.as_str() {
                        "mining.configure" => {
                            pool.answer(id, json!({"version-rolling": true, "version-rolling.mask": "1fffe000"})).await;
                        }
                        "mining.subscribe" => {
                            log.lock().unwrap().subscribes.push(v["params"].clone());
                            pool.answer(id, json!([[["mining.notify", "s1"]], "0a0b0c0d", 4])).await;
                        }
                        "mining.authorize" => {
                            pool.answer(id, json!(script.authorize)).await;
                            if script.authorize && script.send_job {
                                pool.notify_method("mining.set_difficulty", json!([script.difficulty])).await;
                                jobs += 1;
                                pool.notify(notify_params(&format!("{}{jobs}", script.job_prefix), true)).await;
                            }
                        }
                        "mining.submit" => {
                            log.lock().unwrap().submits.push(v["params"].clone());
                            match script.reject_with {
                                None => pool.answer(id, json!(true)).await,
                                Some(code) => pool.answer_error(id, StratumError::new(code, format!("code {code}"))).await,
                            }
                        }
                        _ => pool.answer(id, json!(true)).await,
                    }
                }
                line = control.recv(), if control_open => match line {
                    Some(Some(line)) => pool.send_line(&line).await,
                    // Told to hang up.
                    Some(None) => return,
                    // Nobody steers this pool any more: serve on.
                    None => control_open = false,
                },
            }
        }
    }
}

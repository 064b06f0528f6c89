//! The client's book of recent jobs, and the work source it hands the engine for each.
//!
//! The engine reports shares with the `job_id` of the [`Work`] they were found on. Pool job ids
//! repeat across pools and connections, so every job handed to the engine gets a key of its
//! own (`<serial>/<pool job id>`) in that field; the book maps the key back to the pool
//! connection, the template (to build the submit) and whether `clean_jobs` replaced it since.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rigfleet_engine::{Work, WorkSource};

use crate::job::JobTemplate;

/// Jobs remembered: the engine keeps only the last two generations of work, and pools keep a
/// handful of jobs valid, so 64 leaves room for bursts of non-clean jobs.
pub const MAX_JOBS: usize = 64;

/// Longest part of a pool job id put into a key (pool ids are untrusted; keys show up in logs).
const MAX_KEY_JOB_ID_CHARS: usize = 32;

/// One job handed to the engine.
#[derive(Clone, Debug)]
pub struct JobEntry {
    /// The pool connection it came from.
    pub link: u64,
    /// The pool (index in the client's list).
    pub pool: usize,
    /// What the shares are submitted with.
    pub template: Arc<JobTemplate>,
    /// A later `clean_jobs` on the same connection voided it.
    pub stale: bool,
}

/// Recent jobs by key, oldest evicted first.
#[derive(Debug, Default)]
pub struct JobBook {
    entries: HashMap<Arc<str>, JobEntry>,
    order: VecDeque<Arc<str>>,
    next_serial: u64,
}

impl JobBook {
    /// Records a job and returns its key. A clean job marks every earlier job of the same
    /// connection stale.
    pub fn insert(
        &mut self,
        link: u64,
        pool: usize,
        template: Arc<JobTemplate>,
        clean: bool,
    ) -> Arc<str> {
        if clean {
            for entry in self.entries.values_mut().filter(|e| e.link == link) {
                entry.stale = true;
            }
        }
        self.next_serial += 1;
        let short: String = template
            .notify
            .job_id
            .chars()
            .take(MAX_KEY_JOB_ID_CHARS)
            .collect();
        let key: Arc<str> = format!("{}/{short}", self.next_serial).into();
        self.entries.insert(
            Arc::clone(&key),
            JobEntry {
                link,
                pool,
                template,
                stale: false,
            },
        );
        self.order.push_back(Arc::clone(&key));
        while self.order.len() > MAX_JOBS {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
        key
    }

    /// The job behind a key.
    pub fn get(&self, key: &str) -> Option<&JobEntry> {
        self.entries.get(key)
    }

    /// Jobs remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no job is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Successive headers of one job for the engine, tagged with the job's key. The extranonce2
/// counter is shared with re-issues of the same pool job (after a version-mask change), so a
/// re-issue never repeats a header already mined.
pub struct JobSource {
    template: Arc<JobTemplate>,
    key: Arc<str>,
    next_tag: Arc<AtomicU64>,
}

impl JobSource {
    /// A source starting at the counter's current value.
    pub fn new(template: Arc<JobTemplate>, key: Arc<str>, next_tag: Arc<AtomicU64>) -> Self {
        Self {
            template,
            key,
            next_tag,
        }
    }
}

impl WorkSource for JobSource {
    fn next_work(&mut self) -> Option<Work> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let mut work = self.template.work(tag)?;
        work.job_id = Arc::clone(&self.key);
        Some(work)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Notify;
    use crate::test_utils::notify_params;
    use rigfleet_engine::{Algorithm, Target};

    fn template(job_id: &str) -> Arc<JobTemplate> {
        Arc::new(JobTemplate {
            notify: Notify::parse(&notify_params(job_id, true)).unwrap(),
            extranonce1: vec![1, 2, 3, 4],
            extranonce2_size: 4,
            algorithm: Algorithm::Sha256d,
            target: Target::MAX,
            version_mask: 0,
        })
    }

    #[test]
    fn clean_jobs_make_earlier_jobs_of_the_same_connection_stale() {
        let mut book = JobBook::default();
        let a = book.insert(1, 0, template("a"), true);
        let b = book.insert(1, 0, template("b"), false);
        let other = book.insert(2, 1, template("a"), true);
        assert_ne!(a, other, "same pool job id, different keys");
        assert!(!book.get(&a).unwrap().stale && !book.get(&b).unwrap().stale);
        let c = book.insert(1, 0, template("c"), true);
        assert!(book.get(&a).unwrap().stale && book.get(&b).unwrap().stale);
        assert!(!book.get(&c).unwrap().stale);
        assert!(
            !book.get(&other).unwrap().stale,
            "other connections are untouched"
        );
    }

    #[test]
    fn the_book_is_bounded() {
        let mut book = JobBook::default();
        let first = book.insert(1, 0, template("x"), false);
        for _ in 0..MAX_JOBS {
            book.insert(1, 0, template("x"), false);
        }
        assert_eq!(book.len(), MAX_JOBS);
        assert!(book.get(&first).is_none());
    }

    #[test]
    fn sources_tag_work_with_the_key_and_share_the_counter() {
        let counter = Arc::new(AtomicU64::new(0));
        let key: Arc<str> = "7/j".into();
        let mut s1 = JobSource::new(template("j"), Arc::clone(&key), Arc::clone(&counter));
        let w0 = s1.next_work().unwrap();
        assert_eq!(&*w0.job_id, "7/j");
        assert_eq!(w0.source_tag, 0);
        let mut s2 = JobSource::new(template("j"), "8/j".into(), counter);
        assert_eq!(
            s2.next_work().unwrap().source_tag,
            1,
            "a re-issue continues"
        );
    }
}

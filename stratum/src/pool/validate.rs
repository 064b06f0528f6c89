//! Share validation: rebuild the header a miner claims to have hashed and hash it again.
//!
//! Pure functions over a job and a submit, so that every rule is tested without a socket. The
//! header is rebuilt twice: with [`crate::job`] (the functions the client builds work with, as
//! the issue asks) and with the template's own code ([`super::template`]); if they disagree the
//! share is refused as an internal error, so a header-building bug on the client side cannot pass
//! an end-to-end test just because the pool shares it.

use rigfleet_engine::{Algorithm, Target};

use super::template::Job;
use crate::job;
use crate::message::Submit;

/// How far past the later of the job's ntime and the pool's clock a share's ntime may be, in
/// seconds. The client rolls ntime by at most [`crate::job::MAX_NTIME_ROLL_SECS`] (300); pools
/// commonly allow a few minutes, Bitcoin nodes two hours.
pub const MAX_NTIME_AHEAD_SECS: u32 = 600;

/// What the pool knows about the connection a share came on.
#[derive(Clone, Copy, Debug)]
pub struct ShareContext<'a> {
    /// The algorithm the pool checks.
    pub algorithm: Algorithm,
    /// The connection's extranonce1.
    pub extranonce1: &'a [u8],
    /// The extranonce2 size the connection was told.
    pub extranonce2_size: usize,
    /// The version-rolling mask granted (0 when not negotiated).
    pub version_mask: u32,
    /// The pool's clock, Unix seconds.
    pub now_unix: u32,
}

/// A share whose hash meets the target.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidShare {
    /// The rebuilt header.
    pub header: [u8; 80],
    /// Its hash (the duplicate key, too).
    pub hash: [u8; 32],
    /// The hash's own difficulty (for "best share").
    pub share_difficulty: f64,
    /// Whether it also meets the network target of the job's nBits.
    pub is_block: bool,
}

/// Why a share is refused (before the job and duplicate checks, which need session state).
#[derive(Clone, Debug, PartialEq)]
pub enum Invalid {
    /// Wrong extranonce2 size or ntime out of range (code 20).
    Malformed(String),
    /// Version bits without negotiation or outside the mask (code 20).
    VersionBits(String),
    /// The hash does not meet the share target (code 23).
    LowDifficulty {
        /// What the hash was worth.
        share_difficulty: f64,
    },
    /// The two header builders disagree: a bug in the pool or in `job.rs` (code 20).
    Mismatch,
}

/// The header version of a share (BIP 310): the job's version with the masked bits replaced by
/// the submitted ones. Bits outside the mask, or any bits without a negotiated mask, are an error
/// rather than silently dropped, since they mean the miner hashed a different header.
pub fn rolled_version(
    job_version: u32,
    mask: u32,
    version_bits: Option<u32>,
) -> Result<u32, Invalid> {
    match version_bits {
        None => Ok(job_version),
        Some(_) if mask == 0 => Err(Invalid::VersionBits(
            "version bits sent without version rolling".into(),
        )),
        Some(bits) if bits & !mask != 0 => Err(Invalid::VersionBits(format!(
            "version bits {bits:08x} outside the mask {mask:08x}"
        ))),
        Some(bits) => Ok((job_version & !mask) | (bits & mask)),
    }
}

/// Checks a submit against a job and the share target.
pub fn check_share(
    ctx: &ShareContext<'_>,
    job: &Job,
    submit: &Submit,
    target: &Target,
) -> Result<ValidShare, Invalid> {
    if submit.extranonce2.len() != ctx.extranonce2_size {
        return Err(Invalid::Malformed(format!(
            "extranonce2 is {} bytes, expected {}",
            submit.extranonce2.len(),
            ctx.extranonce2_size
        )));
    }
    let job_ntime = job.notify.ntime;
    if submit.ntime < job_ntime {
        return Err(Invalid::Malformed("ntime before the job's".into()));
    }
    let latest = job_ntime
        .max(ctx.now_unix)
        .saturating_add(MAX_NTIME_AHEAD_SECS);
    if submit.ntime > latest {
        return Err(Invalid::Malformed("ntime too far in the future".into()));
    }
    let version = rolled_version(job.notify.version, ctx.version_mask, submit.version_bits)?;

    let coinbase = job::coinbase(&job.notify, ctx.extranonce1, &submit.extranonce2);
    let root = job::merkle_root(&coinbase, &job.notify.merkle_branch);
    let header = job::header(&job.notify, &root, version, submit.ntime, submit.nonce);
    let independent = job.header_independent(
        ctx.extranonce1,
        &submit.extranonce2,
        version,
        submit.ntime,
        submit.nonce,
    );
    if header != independent {
        return Err(Invalid::Mismatch);
    }

    let hash = ctx.algorithm.hash(&header);
    let share_difficulty = Target::hash_difficulty(ctx.algorithm, &hash);
    if !target.is_met_by(&hash) {
        return Err(Invalid::LowDifficulty { share_difficulty });
    }
    let is_block = Target::from_nbits(job.notify.nbits).is_ok_and(|t| t.is_met_by(&hash));
    Ok(ValidShare {
        header,
        hash,
        share_difficulty,
        is_block,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pool::template::{BlockTemplate, SHA256D_NBITS};
    use rigfleet_engine::Difficulty;

    /// Finds the first nonce from `start` whose header hash meets (or, with `meets` false, does
    /// not meet) the target; the portable hash is the reference.
    pub(crate) fn find_nonce(
        algorithm: Algorithm,
        header_for: impl Fn(u32) -> [u8; 80],
        target: &Target,
        meets: bool,
        start: u32,
    ) -> u32 {
        (start..=u32::MAX)
            .find(|&n| target.is_met_by(&algorithm.hash(&header_for(n))) == meets)
            .expect("a nonce exists at test difficulties")
    }

    fn job() -> Job {
        Job::new(
            1,
            1,
            Arc::new(BlockTemplate::synthetic(881_423, SHA256D_NBITS)),
            4,
            1_700_000_000,
            true,
        )
    }

    fn ctx(mask: u32) -> ShareContext<'static> {
        ShareContext {
            algorithm: Algorithm::Sha256d,
            extranonce1: &[0, 0, 0, 7],
            extranonce2_size: 4,
            version_mask: mask,
            now_unix: 1_700_000_100,
        }
    }

    fn submit(nonce: u32) -> Submit {
        Submit {
            worker: "w".into(),
            job_id: "1".into(),
            extranonce2: vec![1, 2, 3, 4],
            ntime: 1_700_000_000,
            nonce,
            version_bits: None,
        }
    }

    #[test]
    fn version_is_rolled_per_bip_310() {
        let mask = 0x1fff_e000;
        assert_eq!(rolled_version(0x2000_0000, mask, None), Ok(0x2000_0000));
        assert_eq!(
            rolled_version(0x2000_0000, mask, Some(0x0000_6000)),
            Ok(0x2000_6000)
        );
        // Masked bits of the job version are replaced, not ORed.
        assert_eq!(
            rolled_version(0x2000_2000, mask, Some(0x0000_4000)),
            Ok(0x2000_4000)
        );
        assert!(matches!(
            rolled_version(0x2000_0000, mask, Some(0x2000_6000)),
            Err(Invalid::VersionBits(_))
        ));
        assert!(matches!(
            rolled_version(0x2000_0000, 0, Some(0)),
            Err(Invalid::VersionBits(_))
        ));
    }

    #[test]
    fn valid_share_is_accepted_and_everything_else_is_not() {
        let job = job();
        let ctx = ctx(0);
        let target =
            Target::from_difficulty(Algorithm::Sha256d, Difficulty::new(1.0 / 65536.0).unwrap());
        let header_for =
            |n| job.header_independent(&[0, 0, 0, 7], &[1, 2, 3, 4], 0x2000_0000, 1_700_000_000, n);
        let good = find_nonce(Algorithm::Sha256d, header_for, &target, true, 0);
        let ok = check_share(&ctx, &job, &submit(good), &target).unwrap();
        assert!(ok.share_difficulty >= 1.0 / 65536.0);
        assert!(!ok.is_block);
        assert_eq!(ok.hash, Algorithm::Sha256d.hash(&header_for(good)));

        let bad = find_nonce(Algorithm::Sha256d, header_for, &target, false, 0);
        assert!(matches!(
            check_share(&ctx, &job, &submit(bad), &target),
            Err(Invalid::LowDifficulty { .. })
        ));
        // The same nonce with another extranonce2 is another header, almost surely not a share.
        let mut other = submit(good);
        other.extranonce2 = vec![9, 9, 9, 9];
        let relaxed = Target::MAX;
        let moved = check_share(&ctx, &job, &other, &relaxed).unwrap();
        assert_ne!(moved.hash, ok.hash);

        let mut short = submit(good);
        short.extranonce2 = vec![1, 2, 3];
        assert!(matches!(
            check_share(&ctx, &job, &short, &target),
            Err(Invalid::Malformed(_))
        ));
        let mut early = submit(good);
        early.ntime = 1_699_999_999;
        assert!(matches!(
            check_share(&ctx, &job, &early, &target),
            Err(Invalid::Malformed(_))
        ));
        let mut late = submit(good);
        late.ntime = 1_700_000_100 + MAX_NTIME_AHEAD_SECS + 1;
        assert!(matches!(
            check_share(&ctx, &job, &late, &target),
            Err(Invalid::Malformed(_))
        ));
        late.ntime -= 1;
        assert!(!matches!(
            check_share(&ctx, &job, &late, &target),
            Err(Invalid::Malformed(_))
        ));
        let mut rolled = submit(good);
        rolled.version_bits = Some(0x2000);
        assert!(matches!(
            check_share(&ctx, &job, &rolled, &target),
            Err(Invalid::VersionBits(_))
        ));
    }

    #[test]
    fn a_tampered_job_is_caught_by_the_independent_header() {
        // A job whose notify disagrees with its template (as a bug in coinb1/coinb2 or in
        // job.rs would make it) must not validate.
        let mut job = job();
        job.notify.coinb2.push(0);
        let err = check_share(&ctx(0), &job, &submit(0), &Target::MAX).unwrap_err();
        assert_eq!(err, Invalid::Mismatch);
    }
}

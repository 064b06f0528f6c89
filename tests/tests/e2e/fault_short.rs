//! Short versions of the fault harness's scenarios (`scripts/faultharness.sh` runs the long
//! ones and prints the figures). Each asserts outcomes only: no acknowledged sample missing,
//! none duplicated, the right refusal, recovery; the time caps are generous and no figure is
//! asserted as a time.

use std::time::Duration;

use rigfleet_tests::fault_scenarios::*;

fn check(row: Option<Row>) {
    let Some(row) = row else {
        eprintln!("this backend is not available here: the scenario did not run");
        return;
    };
    println!("{}", row.line());
    assert!(row.failures.is_empty(), "{}", row.line());
    let t = row.tally.expect("every scenario compares what agents sent");
    assert_eq!(t.missing_acked, 0, "{}", row.line());
    assert_eq!(t.duplicated, 0, "{}", row.line());
    assert!(t.stored > 0, "something was stored: {}", row.line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_database_cuts_while_agents_catch_up_lose_nothing() {
    let work = tempfile::tempdir().unwrap();
    let plan = CutPlan {
        agents: 3,
        backlog_secs: 600,
        short_cuts: 3,
        short: Duration::from_millis(200),
        long_cuts: 1,
        long: Duration::from_secs(10),
        gap: Duration::from_secs(1),
    };
    check(db_cuts(work.path(), &plan).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_kill_9_of_the_server_loses_nothing_acknowledged() {
    let work = tempfile::tempdir().unwrap();
    let plan = KillPlan {
        agents: 3,
        kills: 3,
        backlog_secs: 120,
        min_up: Duration::from_millis(500),
        max_up: Duration::from_secs(2),
    };
    for on in [On::Sqlite, On::Postgres] {
        let row = kill9(work.path(), on, &plan).await.unwrap();
        if let Some(r) = &row {
            if r.backend == "sqlite" {
                assert_eq!(r.get("integrity"), Some("3 of 3 ok"), "{}", r.line());
            }
            assert_eq!(r.get("answered config versions lost"), Some("0"));
        }
        check(row);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_skewed_agent_clocks_are_corrected_and_shown() {
    let work = tempfile::tempdir().unwrap();
    for on in [On::Sqlite, On::Postgres] {
        // The row fails when a stored time is more than 5 s from when the sample was taken or
        // /metrics does not show the skew.
        let row = clock_skew(
            work.path(),
            on,
            &[3600, -3600, 86_400, -86_400],
            Duration::from_secs(4),
        )
        .await
        .unwrap();
        check(row);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_a_removed_rig_is_disconnected_and_stays_out() {
    let work = tempfile::tempdir().unwrap();
    for on in [On::Sqlite, On::Postgres] {
        // Fails when the link is still open 30 s after the DELETE, or the agent gets back in.
        check(
            rig_removed(work.path(), on, Duration::from_secs(30))
                .await
                .unwrap(),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_a_noisy_agent_loses_nothing_for_the_others() {
    let work = tempfile::tempdir().unwrap();
    check(
        noisy_neighbour(work.path(), On::Sqlite, 4, 100, Duration::from_secs(8))
            .await
            .unwrap(),
    );
}

// Disk full: both scenarios need root (they mount a tmpfs) and print that they did not run
// without it. The server's passes with the server's log on another filesystem. The agent's
// found a bug, fixed in the queue: a write that failed half-way on ENOSPC was cut off but the
// file position stayed past it, so later records landed behind a hole ("CRC mismatch" on every
// read), their seqs were never sent and the acknowledgement waited for them forever.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_a_full_server_disk_recovers_without_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let row = server_disk_full(work.path(), Duration::from_secs(3))
        .await
        .unwrap();
    if let Some(r) = &row {
        // While full, the config write is refused (not answered 200) and nothing is acked.
        let answers = r
            .get("while full: /healthz, /readyz, GET rigs, PUT config, GET /login")
            .unwrap_or_default();
        assert!(
            !answers.contains("Some(200), Some(200), Some(200), Some(200)"),
            "{}",
            r.line()
        );
    }
    check(row);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_a_full_agent_disk_recovers_and_is_counted() {
    let work = tempfile::tempdir().unwrap();
    check(
        agent_disk_full(work.path(), Duration::from_secs(5))
            .await
            .unwrap(),
    );
}

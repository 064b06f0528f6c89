//! Gives freed heap back to the operating system. glibc keeps what a burst freed (a thousand
//! agents connecting at once, telemetry batches decoded and committed) in its arenas, so the
//! server's RSS would stay at the burst's peak; `malloc_trim` returns the free pages. It acts on
//! the whole process, so the binary starts it once, not the library's `start` (which tests run
//! many times in one process).

use std::time::Duration;

/// Trims the heap every `every` until the runtime stops.
pub fn spawn_trimmer(every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            // It walks every arena under their locks: off the async threads.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    })
}

/// Returns free heap pages to the system; true when some were released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: malloc_trim only releases memory the allocator holds as free; it touches nothing
    // that is in use.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators give memory back on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn freed_heap_goes_back_to_the_system() {
        // 64 MiB in blocks under glibc's mmap threshold, so they come from the heap, then freed.
        let blocks: Vec<Vec<u8>> = (0..1024).map(|i| vec![i as u8; 64 * 1024]).collect();
        std::hint::black_box(&blocks);
        drop(blocks);
        assert!(
            super::trim(),
            "malloc_trim released nothing after 64 MiB were freed"
        );
    }
}

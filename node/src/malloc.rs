//! glibc malloc tuning for a process that moves MB-sized buffers between threads (request
//! bodies, log entries, AppendEntries bodies, snapshot reads). glibc serves them from per-thread
//! arenas and, after the first large free, stops mmapping them (its mmap threshold rises to the
//! freed size), so freed multi-MiB chunks stay resident between live ones. Measured on the
//! leader with 500 × 4 MiB writes from 8 clients (`stress-large`, 48 MiB memtables, one run
//! each on a busy machine): peak RSS 326 MiB with two arenas alone, 239 MiB with the trimmer
//! below as well — at 4.0 instead of 5.3 writes/s, since trimmed pages fault in again on reuse.
//! The trade is kept for now; a trimmer that runs only when much memory is free is the next
//! step.

use std::time::Duration;

/// How often free memory inside the arenas is handed back to the kernel. Short enough that a
/// burst of large writes does not pile up freed chunks; each pass is a walk over two arenas'
/// free lists.
const TRIM_INTERVAL: Duration = Duration::from_millis(250);

/// Allocations from this size up are mapped on their own and unmapped when freed (glibc's
/// `M_MMAP_THRESHOLD`, fixed, so glibc no longer raises it after the first large free).
const MMAP_THRESHOLD_BYTES: i32 = 1 << 20;

/// Limits glibc to two malloc arenas (unless `MALLOC_ARENA_MAX` says otherwise) and fixes the
/// mmap threshold at [`MMAP_THRESHOLD_BYTES`] (unless `MALLOC_MMAP_THRESHOLD_` says
/// otherwise). With the default of 8 × cores arenas, MB-sized buffers freed on many blocking
/// threads stay mapped in per-thread arenas: measured with 1 MiB values, peak RSS ~330 MiB
/// with the default versus ~215 MiB with two arenas, at the same throughput. With glibc's
/// dynamic threshold, freed 4 MiB buffers stay resident between live ones: see
/// `bench-results/stress-large-mmap-threshold.md`. Call before any other thread exists.
/// Elsewhere than on glibc: nothing.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            #[allow(unsafe_code)]
            // SAFETY: mallopt only changes allocator tuning; it is called once, before any
            // other thread exists, with a valid parameter (M_ARENA_MAX) and value.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            #[allow(unsafe_code)]
            // SAFETY: as above, with M_MMAP_THRESHOLD and a value below its 32 MiB maximum.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
            }
        }
    }
}

/// Starts a thread that returns the arenas' free pages to the kernel every
/// [`TRIM_INTERVAL`] (`malloc_trim`, which also releases free chunks below the top of a heap,
/// not only its top). A failure to start the thread leaves memory as glibc manages it. Other
/// C libraries than glibc: nothing (both functions are glibc's).
pub fn spawn_trimmer() {
    // The benchmark's baseline switch; never set in production.
    if std::env::var_os("CONFMAN_BENCH_NO_MALLOC_TRIM").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    spawn_glibc_trimmer();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn spawn_glibc_trimmer() {
    let started = std::thread::Builder::new().name("malloc-trim".into()).spawn(|| {
        loop {
            std::thread::sleep(TRIM_INTERVAL);
            #[allow(unsafe_code)]
            // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks each arena).
            unsafe {
                libc::malloc_trim(0);
            }
        }
    });
    if let Err(e) = started {
        tracing::warn!("cannot start the malloc trim thread: {e}");
    }
}

//! The exporter's threads run under `SCHED_IDLE`: they get a CPU only when no transaction
//! work wants it.
//!
//! Why: the export thread wakes every [`super::export::EXPORT_INTERVAL`] and encodes and
//! sends thousands of spans in one burst. At the engine's priority that burst takes a core
//! from an engine thread for milliseconds, and on a small machine the whole pipeline waits
//! for that thread (the coordinator for a participant's votes, the client for replies): a
//! closed loop loses more throughput than the burst's CPU share. At idle priority the
//! burst fills the gaps the pipeline leaves. On a machine with no idle time at all the
//! queue fills and new spans are dropped (counted, and reported) rather than transactions
//! slowed.
//!
//! How: the threads are started by a helper thread that switched itself to `SCHED_IDLE`
//! first (Linux threads inherit their creator's policy). The threads it started are
//! remembered (the threads that appeared during the build and run idle: another thread of
//! the process may start one meanwhile, at its own policy), so that a stopping process can
//! give them the normal policy back and send its last spans without waiting for an idle
//! CPU.

use std::collections::HashSet;

/// Runs `build` on a thread of its own under `SCHED_IDLE`; returns what it built and the
/// threads (kernel thread ids) it started, which inherited the policy. Should the policy
/// be refused, `build` runs anyway, its threads keep the normal policy and none is
/// returned.
pub(super) fn build_at_idle_priority<T: Send>(build: impl FnOnce() -> T + Send) -> (T, Vec<libc::pid_t>) {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Err(err) = set_policy(0, libc::SCHED_IDLE) {
                    tracing::warn!("the span exporter runs at normal priority: SCHED_IDLE refused: {err}");
                }
                let before = threads();
                let built = build();
                // SAFETY: gettid has no preconditions.
                let me = unsafe { libc::gettid() };
                let started = threads()
                    .difference(&before)
                    .copied()
                    .filter(|&tid| tid != me && policy_of(tid) == libc::SCHED_IDLE)
                    .collect();
                (built, started)
            })
            .join()
            .expect("building the span exporter panicked")
    })
}

/// Gives `threads` the normal policy back (a thread that has ended is skipped).
pub(super) fn restore_normal_priority(threads: &[libc::pid_t]) {
    for &tid in threads {
        if let Err(err) = set_policy(tid, libc::SCHED_OTHER)
            && err.raw_os_error() != Some(libc::ESRCH)
        {
            tracing::warn!(tid, "the span exporter keeps idle priority while stopping: {err}");
        }
    }
}

/// Sets thread `tid`'s scheduling policy (0: the calling thread), priority 0.
fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// This process's threads, by kernel thread id.
fn threads() -> HashSet<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc/self/task") else { return HashSet::new() };
    entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Thread `tid`'s scheduling policy (0: the calling thread; -1: no such thread).
fn policy_of(tid: libc::pid_t) -> libc::c_int {
    // SAFETY: sched_getscheduler has no preconditions.
    unsafe { libc::sched_getscheduler(tid) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn threads_started_by_the_build_run_idle_until_restored() {
        let (stop, stopped) = mpsc::channel::<()>();
        let ((tid, worker), started) = build_at_idle_priority(|| {
            let (tid_out, tid_in) = mpsc::channel();
            let worker = std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid_out.send(unsafe { libc::gettid() }).unwrap();
                stopped.recv().ok();
            });
            (tid_in.recv().unwrap(), worker)
        });
        // Tests running alongside may start idle threads of their own meanwhile: the
        // worker is among those found, not necessarily alone.
        assert!(started.contains(&tid), "the worker {tid} is among the threads found: {started:?}");
        assert_eq!(policy_of(tid), libc::SCHED_IDLE);
        // SAFETY: gettid has no preconditions.
        assert_eq!(policy_of(unsafe { libc::gettid() }), libc::SCHED_OTHER, "the caller keeps its policy");
        restore_normal_priority(&[tid]);
        assert_eq!(policy_of(tid), libc::SCHED_OTHER);
        stop.send(()).unwrap();
        worker.join().unwrap();
        restore_normal_priority(&[tid]); // ended: skipped without a word
    }
}

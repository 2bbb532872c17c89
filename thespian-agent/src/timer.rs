//! Sleeps that end on time.
//!
//! tokio's timer works in whole milliseconds (a deadline is rounded up to the next tick) and its driver
//! parks in `epoll_wait`, whose timeout is rounded up to a millisecond too: measured on the bench machine, a
//! 10 ms `tokio::time::sleep` among 100 concurrent ones took 11.3 ms on average and 13.2 ms at p99. A
//! Thespian's sleeps *are* its behaviour (`duration_ms: 10` should look like 10 ms in a trace), so the
//! coarse part of a sleep still goes to tokio (cheap, and dropped with the request) and the last few
//! milliseconds to one precise timer thread that waits on a condition variable with a nanosecond timeout
//! and wakes the task at its deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The part of a sleep left to the precise thread: more than tokio's worst overshoot seen under load, so
/// the coarse part practically never ends after the deadline.
const PRECISE_TAIL: Duration = Duration::from_millis(5);

/// Sleeps for `duration`, ending within a fraction of a millisecond after the deadline.
pub async fn sleep(duration: Duration) {
    let deadline = Instant::now() + duration;
    if duration > PRECISE_TAIL {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline - PRECISE_TAIL)).await;
    }
    match timer() {
        Some(timer) => {
            PreciseSleep {
                deadline,
                timer,
                registered: None,
            }
            .await
        }
        // No timer thread (it could not be started): tokio's precision is still correct, only coarser.
        None => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
    }
}

struct PreciseSleep {
    deadline: Instant,
    timer: &'static Timer,
    /// The waker last handed to the timer, so repeated polls by the same task do not register again.
    registered: Option<Waker>,
}

impl Future for PreciseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        if self.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        self.registered = Some(cx.waker().clone());
        self.timer.register(self.deadline, cx.waker().clone());
        Poll::Pending
    }
}

struct Entry {
    deadline: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

#[derive(Default)]
struct Timer {
    state: Mutex<(BinaryHeap<Reverse<Entry>>, u64)>,
    changed: Condvar,
}

fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();
    *TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::default());
        std::thread::Builder::new()
            .name("thespian-timer".into())
            .stack_size(64 * 1024)
            .spawn(move || timer.run())
            .ok()
            .map(|_| timer)
    })
}

impl Timer {
    fn lock(&self) -> MutexGuard<'_, (BinaryHeap<Reverse<Entry>>, u64)> {
        // A panic while holding the lock cannot leave the heap inconsistent (push/pop are atomic to us).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, deadline: Instant, waker: Waker) {
        let mut state = self.lock();
        let seq = state.1;
        state.1 += 1;
        let earliest = state.0.peek().is_none_or(|Reverse(e)| deadline < e.deadline);
        state.0.push(Reverse(Entry { deadline, seq, waker }));
        drop(state);
        if earliest {
            self.changed.notify_one();
        }
    }

    fn run(&self) {
        let mut due = Vec::new();
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            while state.0.peek().is_some_and(|Reverse(e)| e.deadline <= now) {
                if let Some(Reverse(entry)) = state.0.pop() {
                    due.push(entry.waker);
                }
            }
            if !due.is_empty() {
                // Wake outside the lock: a woken task may register its next sleep at once.
                drop(state);
                due.drain(..).for_each(Waker::wake);
                state = self.lock();
                continue;
            }
            state = match state.0.peek().map(|Reverse(e)| e.deadline - now) {
                None => self.changed.wait(state).unwrap_or_else(PoisonError::into_inner),
                Some(wait) => {
                    self.changed
                        .wait_timeout(state, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sleeps_never_end_early_and_overlap() {
        let started = Instant::now();
        let handles: Vec<_> = [1u64, 3, 7, 12, 20]
            .into_iter()
            .map(|ms| {
                tokio::spawn(async move {
                    let t = Instant::now();
                    sleep(Duration::from_millis(ms)).await;
                    (ms, t.elapsed())
                })
            })
            .collect();
        for h in handles {
            let (ms, took) = h.await.expect("join");
            assert!(took >= Duration::from_millis(ms), "{ms} ms sleep took {took:?}");
        }
        assert!(started.elapsed() < Duration::from_millis(200), "sleeps overlap");
    }

    #[tokio::test]
    async fn a_dropped_sleep_leaves_no_trouble() {
        let short = tokio::time::timeout(Duration::from_millis(1), sleep(Duration::from_millis(3))).await;
        assert!(short.is_err());
        sleep(Duration::from_millis(4)).await;
    }
}

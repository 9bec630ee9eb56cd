//! Coarse timers for per-request deadlines (a response timeout, hyper's header read timeout).
//!
//! A tokio timer per request (a boxed `Sleep`, a clock read and a timer-wheel entry made and
//! dropped for every request) cost the ingress about a fifth of its throughput. Deadlines of
//! seconds do not need millisecond precision: a worker keeps one ticker that counts
//! [`TICK`]s and wakes whoever waits at each tick; a deadline is a tick number, checked
//! without reading the clock.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The resolution of coarse deadlines.
pub const TICK: Duration = Duration::from_millis(100);

/// One per worker. Cloning shares it.
#[derive(Clone)]
pub struct Coarse(Arc<Ticker>);

struct Ticker {
    start: Instant,
    /// Ticks since `start`.
    now: AtomicU64,
    waiting: Mutex<Vec<Waker>>,
}

impl Coarse {
    /// Starts the ticker on the current runtime; it stops when the last clone is dropped.
    pub fn start() -> Coarse {
        let ticker = Arc::new(Ticker {
            start: Instant::now(),
            now: AtomicU64::new(0),
            waiting: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&ticker);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(t) = weak.upgrade() else { return };
                t.now.store(
                    t.start.elapsed().as_millis() as u64 / TICK.as_millis() as u64,
                    Ordering::Relaxed,
                );
                let woken =
                    std::mem::take(&mut *t.waiting.lock().unwrap_or_else(|p| p.into_inner()));
                for w in woken {
                    w.wake();
                }
            }
        });
        Coarse(ticker)
    }

    /// Resolves once `after` has passed: never early, up to one tick late (the current tick
    /// may have begun up to a tick ago, hence the one added).
    pub fn sleep(&self, after: Duration) -> CoarseSleep {
        let ticks = after.as_millis().div_ceil(TICK.as_millis()) as u64;
        CoarseSleep {
            at: self.0.now.load(Ordering::Relaxed) + ticks + 1,
            ticker: self.0.clone(),
        }
    }

    fn sleep_until_instant(&self, deadline: Instant) -> CoarseSleep {
        self.sleep(deadline.saturating_duration_since(self.now_instant()))
    }

    fn now_instant(&self) -> Instant {
        self.0.start + TICK * self.0.now.load(Ordering::Relaxed) as u32
    }

    /// `f`, or `None` when it did not finish within `limit`.
    pub async fn within<F: Future>(&self, limit: Duration, f: F) -> Option<F::Output> {
        let sleep = self.sleep(limit);
        tokio::select! {
            biased;
            out = f => Some(out),
            () = sleep => None,
        }
    }
}

/// A coarse deadline.
pub struct CoarseSleep {
    at: u64,
    ticker: Arc<Ticker>,
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.ticker.now.load(Ordering::Relaxed) >= self.at {
            return Poll::Ready(());
        }
        self.ticker
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(cx.waker().clone());
        Poll::Pending
    }
}

impl hyper::rt::Sleep for CoarseSleep {}

impl hyper::rt::Timer for Coarse {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Coarse::sleep(self, duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.sleep_until_instant(deadline))
    }

    fn now(&self) -> Instant {
        self.now_instant()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_coarse_sleep_ends_after_its_time_and_at_most_a_tick_or_two_late() {
        let coarse = Coarse::start();
        let started = Instant::now();
        coarse.sleep(Duration::from_millis(250)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_millis(250) + 3 * TICK, "{took:?}");
        let fast = coarse.within(Duration::from_secs(5), async { 7 }).await;
        assert_eq!(fast, Some(7));
        let slow = coarse
            .within(Duration::from_millis(100), std::future::pending::<()>())
            .await;
        assert_eq!(slow, None);
    }
}

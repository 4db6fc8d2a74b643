//! Supervision of the node's long-running loops (job driver, lease and reconcile, placement
//! duties, replication streams, bootstraps): a panic in one of them must not silently stop
//! that part of the node while the rest keeps answering.
//!
//! ```text
//!  spawn_supervised(loops, name, stop, make):
//!    loop:
//!      run make() in its own task          ends normally (shutdown, done) -> finished, never restarted
//!                                          panics -> ERROR log (name, message),
//!                                                    coopr_loop_panics_total{loop=name} += 1,
//!                                                    state Down (/ready answers 503 naming it)
//!      wait the backoff (100 ms, doubling to 10 s; back to 100 ms after a run of 30 s)
//!      or stop -> return
//! ```
//!
//! A loop that panicked more than [`CRASH_LOOP_PANICS`] times within [`CRASH_LOOP_WINDOW`]
//! keeps being restarted, but the node stays unready until the window has no more than that:
//! a loop that dies on every pass is as good as stopped.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};
// Loop restarts and crash counts are timed on tokio's clock, which a simulation drives.
use tokio::time::Instant;

/// More panics than this within [`CRASH_LOOP_WINDOW`] make a loop unhealthy even while it runs.
pub const CRASH_LOOP_PANICS: usize = 3;
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(60);

/// How a supervisor waits before restarting a loop that panicked.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first wait after a panic.
    pub first: Duration,
    /// The wait doubles per consecutive panic up to this.
    pub max: Duration,
    /// A run at least this long counts as healthy: the next panic waits `first` again.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(10),
            reset_after: Duration::from_secs(30),
        }
    }
}

/// One supervised loop as the registry sees it.
#[derive(Debug, Clone)]
pub struct LoopStatus {
    pub phase: Phase,
    /// How many times the loop was started (1 + restarts).
    pub starts: u64,
    /// Panics since the node started.
    pub panics: u64,
    /// The message of the last panic.
    pub last_panic: Option<String>,
    /// When the recent panics happened (within [`CRASH_LOOP_WINDOW`]).
    recent: VecDeque<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Panicked; waits for its restart.
    Down,
    /// Ended normally (shutdown, or its work was done): not restarted.
    Finished,
}

impl LoopStatus {
    /// Why the loop makes the node unhealthy, if it does.
    fn unhealthy(&self, now: Instant) -> Option<&'static str> {
        let recent = self
            .recent
            .iter()
            .filter(|at| now.duration_since(**at) < CRASH_LOOP_WINDOW)
            .count();
        match self.phase {
            Phase::Down => Some("down"),
            _ if recent > CRASH_LOOP_PANICS => Some("crash_looping"),
            _ => None,
        }
    }
}

/// The node's supervised loops, by name (shared by the supervisors and `/ready`).
#[derive(Default)]
pub struct Loops {
    loops: Mutex<BTreeMap<String, LoopStatus>>,
    /// Injected panics (see [`Loops::inject_panic`]), by loop name.
    injected: Mutex<BTreeMap<String, Arc<Notify>>>,
}

impl Loops {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, LoopStatus>> {
        self.loops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every loop's status, by name.
    pub fn statuses(&self) -> BTreeMap<String, LoopStatus> {
        self.lock().clone()
    }

    pub fn status(&self, name: &str) -> Option<LoopStatus> {
        self.lock().get(name).cloned()
    }

    /// The loops that make the node unhealthy now, with why (`down`, `crash_looping`).
    pub fn unhealthy(&self) -> Vec<(String, &'static str)> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter_map(|(name, status)| Some((name.clone(), status.unhealthy(now)?)))
            .collect()
    }

    /// Makes the running loop `name` panic as a bug inside it would (its task unwinds and its
    /// state is dropped), for tests of the supervision through a real server. Does nothing
    /// when no such loop runs.
    #[doc(hidden)]
    pub fn inject_panic(&self, name: &str) {
        let notify = self
            .injected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned();
        if let Some(notify) = notify {
            notify.notify_one();
        }
    }

    fn injection(&self, name: &str) -> Arc<Notify> {
        self.injected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn started(&self, name: &str) {
        let mut loops = self.lock();
        let status = loops.entry(name.to_string()).or_insert(LoopStatus {
            phase: Phase::Running,
            starts: 0,
            panics: 0,
            last_panic: None,
            recent: VecDeque::new(),
        });
        status.phase = Phase::Running;
        status.starts += 1;
    }

    fn panicked(&self, name: &str, message: &str) {
        let now = Instant::now();
        let mut loops = self.lock();
        if let Some(status) = loops.get_mut(name) {
            status.phase = Phase::Down;
            status.panics += 1;
            status.last_panic = Some(message.to_string());
            status.recent.push_back(now);
            while status
                .recent
                .front()
                .is_some_and(|at| now.duration_since(*at) >= CRASH_LOOP_WINDOW)
            {
                status.recent.pop_front();
            }
        }
    }

    fn finished(&self, name: &str) {
        if let Some(status) = self.lock().get_mut(name) {
            status.phase = Phase::Finished;
        }
    }
}

/// Runs the loop `make()` builds under supervision (see the module doc), with the default
/// [`Backoff`]. The returned task ends when the loop ends normally, or when `stop` turns true
/// while the loop is down.
pub fn spawn_supervised<F, Fut>(
    loops: &Arc<Loops>,
    name: impl Into<String>,
    stop: watch::Receiver<bool>,
    make: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    spawn_supervised_with(loops, name, stop, Backoff::default(), make)
}

/// [`spawn_supervised`] with a given backoff.
pub fn spawn_supervised_with<F, Fut>(
    loops: &Arc<Loops>,
    name: impl Into<String>,
    mut stop: watch::Receiver<bool>,
    backoff: Backoff,
    make: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let loops = loops.clone();
    let name = name.into();
    tokio::spawn(async move {
        let injected = loops.injection(&name);
        let mut wait = backoff.first;
        loop {
            loops.started(&name);
            let started = Instant::now();
            let run = make();
            let injected = injected.clone();
            let task = tokio::spawn(async move {
                tokio::select! {
                    _ = run => {}
                    _ = injected.notified() => panic!("injected panic"),
                }
            });
            let error = match task.await {
                Ok(()) => {
                    loops.finished(&name);
                    return;
                }
                Err(e) if e.is_panic() => panic_message(e.into_panic()),
                // Cancelled: the runtime is shutting down.
                Err(_) => return,
            };
            metrics::counter!("coopr_loop_panics_total", "loop" => name.clone()).increment(1);
            loops.panicked(&name, &error);
            if started.elapsed() >= backoff.reset_after {
                wait = backoff.first;
            }
            tracing::error!(loop_name = %name, panic = %error, restart_in_ms = wait.as_millis() as u64,
                "background loop panicked; restarting it");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => {
                    loops.finished(&name);
                    return;
                }
            }
            wait = (wait * 2).min(backoff.max);
        }
    })
}

/// The text of a panic's payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Tiny waits for tests; the one after the second panic is long enough to watch the loop
    /// down.
    fn quick() -> Backoff {
        Backoff {
            first: Duration::from_millis(10),
            max: Duration::from_millis(400),
            reset_after: Duration::from_secs(60),
        }
    }

    async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A loop that panics on its first two runs is restarted after each panic, counted, and
    /// healthy once it runs again; it is not restarted after it ends normally. (Down between
    /// a panic and its restart: the next test.)
    #[tokio::test]
    async fn a_panicking_loop_is_restarted_and_healthy_once_it_runs() {
        let loops = Arc::new(Loops::default());
        let (_stop_tx, stop) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let (end_tx, end) = watch::channel(false);
        let task = {
            let runs = runs.clone();
            spawn_supervised_with(&loops, "test-loop", stop, quick(), move || {
                let runs = runs.clone();
                let mut end = end.clone();
                async move {
                    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    if n <= 2 {
                        panic!("bug number {n}");
                    }
                    let _ = end.wait_for(|e| *e).await;
                }
            })
        };
        wait_until("the second panic", || {
            loops.status("test-loop").is_some_and(|s| s.panics == 2)
        })
        .await;
        let down = loops.status("test-loop").expect("registered");
        assert_eq!(down.last_panic.as_deref(), Some("bug number 2"));
        wait_until("the third run", || runs.load(Ordering::SeqCst) == 3).await;
        let running = loops.status("test-loop").expect("registered");
        assert_eq!((running.phase, running.starts), (Phase::Running, 3));
        assert!(loops.unhealthy().is_empty(), "{:?}", loops.unhealthy());
        // Ending normally is final.
        end_tx.send(true).expect("loop listens");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the supervisor ends with its loop")
            .expect("the supervisor does not panic");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "not restarted after a normal end"
        );
        assert_eq!(
            loops.status("test-loop").map(|s| s.phase),
            Some(Phase::Finished)
        );
    }

    /// Between a panic and the restart the loop is down, deterministically: the backoff is
    /// long and the test looks during it. Stopping the node then ends the supervisor without
    /// a restart.
    #[tokio::test]
    async fn a_down_loop_is_unhealthy_until_restarted_and_stop_ends_it() {
        let loops = Arc::new(Loops::default());
        let (stop_tx, stop) = watch::channel(false);
        let backoff = Backoff {
            first: Duration::from_secs(30),
            ..quick()
        };
        let runs = Arc::new(AtomicU32::new(0));
        let task = {
            let runs = runs.clone();
            spawn_supervised_with(&loops, "driver", stop, backoff, move || {
                runs.fetch_add(1, Ordering::SeqCst);
                async { panic!("always") }
            })
        };
        wait_until("the panic", || {
            loops
                .status("driver")
                .is_some_and(|s| s.phase == Phase::Down)
        })
        .await;
        assert_eq!(loops.unhealthy(), vec![("driver".to_string(), "down")]);
        stop_tx.send(true).expect("supervisor listens");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stop ends the supervisor during its backoff")
            .expect("no panic escapes");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "not restarted after stop");
    }

    /// A loop that panics on every run stays unhealthy (crash looping) even while it runs,
    /// once it panicked more than `CRASH_LOOP_PANICS` times within the window; the waits
    /// between its restarts grow up to the maximum.
    #[tokio::test]
    async fn a_crash_looping_loop_stays_unhealthy_while_running() {
        let loops = Arc::new(Loops::default());
        let (_stop_tx, stop) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let (release_tx, release) = watch::channel(false);
        let _task = {
            let runs = runs.clone();
            spawn_supervised_with(&loops, "puller-b", stop, quick(), move || {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                let mut release = release.clone();
                async move {
                    if n as usize <= CRASH_LOOP_PANICS + 1 {
                        panic!("panic {n}");
                    }
                    // Runs (and keeps running) after the crash loop.
                    let _ = release.wait_for(|r| *r).await;
                }
            })
        };
        let runs_now = runs.clone();
        wait_until("the run after the crash loop", move || {
            runs_now.load(Ordering::SeqCst) as usize == CRASH_LOOP_PANICS + 2
        })
        .await;
        let status = loops.status("puller-b").expect("registered");
        assert_eq!(status.phase, Phase::Running);
        assert_eq!(
            loops.unhealthy(),
            vec![("puller-b".to_string(), "crash_looping")]
        );
        drop(release_tx);
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        assert_eq!(panic_message(Box::new("literal")), "literal");
        assert_eq!(
            panic_message(Box::new(format!("formatted {}", 1))),
            "formatted 1"
        );
        assert_eq!(panic_message(Box::new(7u8)), "a panic without a message");
    }
}

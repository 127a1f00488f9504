//! Single flight: concurrent asks for the same key share one run of the work. The first asker
//! starts it (on a task of its own, so that it finishes even if every asker goes away: a
//! half-fetched blob is cleaned up by the fetch itself, never by a cancellation); the others
//! wait for its result. Once it has finished, the key is forgotten: the next ask runs anew
//! (it then finds the blob or image in the store, or retries a failure).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

/// Work under way, by key. Cheap to clone; clones share the work.
pub struct SingleFlight<K, V> {
    flights: Arc<Mutex<HashMap<K, Flight<V>>>>,
}

struct Flight<V> {
    /// Which flight this is: a finished flight removes its own entry, never a newer one.
    serial: u64,
    result: Shared<BoxFuture<'static, V>>,
}

/// How an ask was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<V> {
    pub value: V,
    /// True for the ask that ran the work; false for one that waited for another's run.
    pub ran: bool,
}

impl<K, V> Clone for SingleFlight<K, V> {
    fn clone(&self) -> Self {
        SingleFlight {
            flights: self.flights.clone(),
        }
    }
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            flights: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new() -> Self {
        Self::default()
    }

    /// The result of `work()` for `key`: run now, or, when a run for `key` is under way, that
    /// run's result (and `work` is not called).
    pub async fn run<F, Fut>(&self, key: K, work: F) -> Answer<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (result, ran) = {
            let mut flights = lock(&self.flights);
            match flights.get(&key) {
                Some(flight) => (flight.result.clone(), false),
                None => {
                    let serial = next_serial();
                    let fut = work();
                    let flights_ref = self.flights.clone();
                    let key_done = key.clone();
                    // Spawned: it runs to its end whoever waits. The map's lock is held until
                    // the entry is in, so the task cannot remove it before it exists.
                    let handle = tokio::spawn(async move {
                        let value = fut.await;
                        let mut flights = lock(&flights_ref);
                        if flights.get(&key_done).is_some_and(|f| f.serial == serial) {
                            flights.remove(&key_done);
                        }
                        value
                    });
                    let result = async move {
                        match handle.await {
                            Ok(value) => value,
                            // The work panicked: every asker sees the panic.
                            Err(e) => std::panic::resume_unwind(e.into_panic()),
                        }
                    }
                    .boxed()
                    .shared();
                    flights.insert(
                        key,
                        Flight {
                            serial,
                            result: result.clone(),
                        },
                    );
                    (result, true)
                }
            }
        };
        Answer {
            value: result.await,
            ran,
        }
    }

    /// How many keys have work under way.
    pub fn in_flight(&self) -> usize {
        lock(&self.flights).len()
    }
}

fn next_serial() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn single_flight_concurrent_asks_share_one_run() {
        let flights: SingleFlight<String, Result<u64, String>> = SingleFlight::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        // The first poll of `join_all` makes every ask, while the work waits at the gate: all
        // eight are under way at once, whatever the machine's load.
        let asks = (0..8).map(|_| {
            let (runs, mut gate) = (runs.clone(), gate.clone());
            flights.run("sha256:aa".to_string(), move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let _ = gate.wait_for(|open| *open).await;
                Ok(42)
            })
        });
        let open_gate = async {
            tokio::task::yield_now().await;
            assert_eq!(flights.in_flight(), 1);
            release.send_replace(true);
        };
        let (answers, ()) = tokio::join!(futures::future::join_all(asks), open_gate);
        assert!(answers.iter().all(|a| a.value == Ok(42)), "{answers:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one run for eight asks");
        assert_eq!(
            answers.iter().filter(|a| a.ran).count(),
            1,
            "one asker ran it"
        );
        assert_eq!(flights.in_flight(), 0, "forgotten once finished");
    }

    #[tokio::test]
    async fn single_flight_keys_are_independent_and_finished_work_runs_again() {
        let flights: SingleFlight<&'static str, Result<&'static str, String>> = SingleFlight::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let work = |v: &'static str, runs: Arc<AtomicUsize>| {
            move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(v)
            }
        };
        let (a, b) = tokio::join!(
            flights.run("a", work("A", runs.clone())),
            flights.run("b", work("B", runs.clone()))
        );
        assert_eq!((a.value, b.value), (Ok("A"), Ok("B")));
        assert!(a.ran && b.ran);
        let again = flights.run("a", work("A2", runs.clone())).await;
        assert_eq!(again.value, Ok("A2"), "a finished run is not cached");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn single_flight_shares_a_failure_then_retries() {
        let flights: SingleFlight<u8, Result<(), String>> = SingleFlight::new();
        let (release, mut gate) = tokio::sync::watch::channel(false);
        let first = flights.run(1, move || async move {
            let _ = gate.wait_for(|open| *open).await;
            Err("peer went away".to_string())
        });
        let second = flights.run(1, || async { panic!("must wait for the first run") });
        let open_gate = async {
            tokio::task::yield_now().await;
            release.send_replace(true);
        };
        let (first, second, ()) = tokio::join!(first, second, open_gate);
        assert_eq!(first.value, Err("peer went away".into()));
        assert_eq!(
            second.value, first.value,
            "the waiter gets the same failure"
        );
        assert!(first.ran && !second.ran);
        let retry = flights.run(1, || async { Ok(()) }).await;
        assert_eq!(retry.value, Ok(()), "a failure is not remembered");
    }

    #[tokio::test]
    async fn single_flight_work_finishes_when_its_asker_goes_away() {
        let flights: SingleFlight<u8, u8> = SingleFlight::new();
        let done = Arc::new(AtomicUsize::new(0));
        let asker = {
            let (flights, done) = (flights.clone(), done.clone());
            tokio::spawn(async move {
                flights
                    .run(7, move || async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        done.fetch_add(1, Ordering::SeqCst);
                        7
                    })
                    .await
            })
        };
        while flights.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        asker.abort();
        let _ = asker.await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while done.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(done.load(Ordering::SeqCst), 1, "the work ran to its end");
        assert_eq!(flights.in_flight(), 0);
    }
}

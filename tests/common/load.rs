//! A small HTTP load generator on loopback for the rollout tests: a few clients, each sending
//! one request after the other over a fresh connection, bounded in count and time, every
//! answer recorded with when its request started.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Requests per client at most, whatever happens.
const MAX_REQUESTS: usize = 20_000;
/// A client never runs longer than this.
const MAX_RUN: Duration = Duration::from_secs(180);

/// `GET path` over a fresh connection to `127.0.0.1:port`: the body's last line.
pub fn get_path(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    if !text.starts_with("HTTP/1.") || !text.contains(" 200 ") {
        return Err(std::io::Error::other(format!("bad answer {text:?}")));
    }
    Ok(text.lines().last().unwrap_or_default().trim().to_string())
}

/// `GET /`.
pub fn get(port: u16) -> std::io::Result<String> {
    get_path(port, "/")
}

/// One answer: when its request started, and the body or the error.
#[derive(Debug, Clone)]
pub struct Answer {
    pub at: Instant,
    pub result: Result<String, String>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    answers: Vec<Arc<Mutex<Vec<Answer>>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// `clients` clients asking `GET path`, each pausing `pause` between requests.
    pub fn start(port: u16, path: &str, clients: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut answers = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..clients {
            let mine = Arc::new(Mutex::new(Vec::new()));
            answers.push(mine.clone());
            let (stop, path) = (stop.clone(), path.to_string());
            threads.push(std::thread::spawn(move || {
                let began = Instant::now();
                for _ in 0..MAX_REQUESTS {
                    if stop.load(Ordering::Relaxed) || began.elapsed() > MAX_RUN {
                        break;
                    }
                    let at = Instant::now();
                    let result = get_path(port, &path).map_err(|e| e.to_string());
                    mine.lock().expect("answers").push(Answer { at, result });
                    std::thread::sleep(pause);
                }
            }));
        }
        Load {
            stop,
            answers,
            threads,
        }
    }

    /// Stops the load; returns each client's answers, in order.
    pub fn finish(mut self) -> Vec<Vec<Answer>> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("a load client");
        }
        self.answers
            .iter()
            .map(|a| std::mem::take(&mut *a.lock().expect("answers")))
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Checks a load run across a switch from `from` to `to`: no request failed, and each client
/// saw `from` first, then `to` for good (once a client got `to`, it never got `from` again).
/// Returns when the first `to` answer's request started.
pub fn check_switch(clients: &[Vec<Answer>], from: &str, to: &str) -> Instant {
    let all: Vec<&Answer> = clients.iter().flatten().collect();
    let failed: Vec<&String> = all.iter().filter_map(|a| a.result.as_ref().err()).collect();
    let count = |v: &str| all.iter().filter(|a| a.result.as_deref() == Ok(v)).count();
    eprintln!(
        "{} requests from {} clients, {} failed, {} answered {from}, {} answered {to}",
        all.len(),
        clients.len(),
        failed.len(),
        count(from),
        count(to)
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(all.len() > 50, "too little load: {}", all.len());
    for (i, answers) in clients.iter().enumerate() {
        let ok: Vec<&str> = answers
            .iter()
            .filter_map(|a| a.result.as_deref().ok())
            .collect();
        assert!(
            ok.iter().all(|a| *a == from || *a == to),
            "client {i}: unexpected answers in {ok:?}"
        );
        assert_eq!(
            ok.first().copied(),
            Some(from),
            "client {i} began elsewhere"
        );
        let first_to = ok
            .iter()
            .position(|a| *a == to)
            .unwrap_or_else(|| panic!("client {i} never got {to}"));
        assert!(
            ok[first_to..].iter().all(|a| *a == to),
            "client {i} got {from} again after {to}: {:?}",
            &ok[first_to..]
        );
    }
    all.iter()
        .filter(|a| a.result.as_deref() == Ok(to))
        .map(|a| a.at)
        .min()
        .expect("a first answer from the new version")
}

/// Checks a load run across a rolling update from `from` to `to`: no request failed, only the
/// two versions answered, and each client began on `from` and ended on `to` (in between,
/// replicas of both serve side by side).
pub fn check_rolling(clients: &[Vec<Answer>], from: &str, to: &str) {
    let all: Vec<&Answer> = clients.iter().flatten().collect();
    let failed: Vec<&String> = all.iter().filter_map(|a| a.result.as_ref().err()).collect();
    eprintln!(
        "{} requests from {} clients, {} failed",
        all.len(),
        clients.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(all.len() > 50, "too little load: {}", all.len());
    for (i, answers) in clients.iter().enumerate() {
        let ok: Vec<&str> = answers
            .iter()
            .filter_map(|a| a.result.as_deref().ok())
            .collect();
        assert!(
            ok.iter().all(|a| *a == from || *a == to),
            "client {i}: unexpected answers in {ok:?}"
        );
        assert_eq!(
            ok.first().copied(),
            Some(from),
            "client {i} began elsewhere"
        );
        assert_eq!(
            ok.last().copied(),
            Some(to),
            "client {i} did not end on {to}"
        );
    }
}

/// Checks a load run that must never leave `version`: nothing failed, everything answered it.
pub fn check_steady(clients: &[Vec<Answer>], version: &str) {
    let all: Vec<&Answer> = clients.iter().flatten().collect();
    let other: Vec<&Result<String, String>> = all
        .iter()
        .map(|a| &a.result)
        .filter(|r| r.as_deref() != Ok(version))
        .collect();
    eprintln!(
        "{} requests from {} clients, {} not answered {version}",
        all.len(),
        clients.len(),
        other.len()
    );
    assert!(all.len() > 50, "too little load: {}", all.len());
    assert!(other.is_empty(), "answers other than {version}: {other:?}");
}

//! gRPC through restarts: `examples/grpc.rs` under a real master, called with tonic's client.
//!
//! Server-streaming calls in flight when the worker drains get every message and status OK from
//! the old worker (its HTTP/2 connections get a graceful GOAWAY and their streams run to the
//! end), and so does a bidirectional call; then the old worker exits, and new calls, on a new
//! channel or on the channel the old worker sent its GOAWAY on, reach the new worker.
//! A drain that closed the connections, or sent GOAWAY with the last stream id at once and
//! dropped the streams, fails the stream checks.

mod util;

#[path = "../examples/common/counter.rs"]
mod counter;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use counter::{CountRequest, Tick};
use util::{Options, Service};

/// `Count` calls in flight across the restarts; the even ones share one channel (one HTTP/2
/// connection), the odd ones have a channel each.
const STREAMS: usize = 8;
const TICKS: u32 = 30;
const INTERVAL_MS: u32 = 50;
/// Ticks the `Echo` call sends, 50 ms apart.
const ECHOES: u32 = 20;

/// Runs `future` on `runtime`, failing the test after `timeout`.
fn block_on<T>(
    runtime: &tokio::runtime::Runtime,
    what: &str,
    timeout: Duration,
    future: impl Future<Output = T>,
) -> T {
    runtime
        .block_on(async { tokio::time::timeout(timeout, future).await })
        .unwrap_or_else(|_| panic!("{what}: no answer within {timeout:?}"))
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool, service: &Service) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}; log:\n{}", service.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The seq and pid of every tick, checked: 0, 1, 2, … all from `pid`.
fn check_ticks(what: &str, ticks: &[Tick], expected: u32, pid: u32) {
    let seqs: Vec<u32> = ticks.iter().map(|t| t.seq).collect();
    assert_eq!(
        seqs,
        (0..expected).collect::<Vec<_>>(),
        "{what}: every tick, in order"
    );
    let pids: Vec<u32> = ticks.iter().map(|t| t.pid).filter(|p| *p != pid).collect();
    assert!(
        pids.is_empty(),
        "{what}: ticks from other pids than {pid}: {pids:?}"
    );
}

#[test]
fn grpc_streams_in_flight_run_to_the_end_across_restarts_and_new_calls_reach_the_new_worker() {
    let began = Instant::now();
    let service = Service::serving(Options {
        example: "grpc",
        ..Default::default()
    });
    let port = service.port;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let wait = Duration::from_secs(5);
    let first = service.worker_pid();
    let shared = block_on(&runtime, "connect", wait, counter::connect(port)).unwrap();
    let answered = block_on(&runtime, "whoami", wait, counter::whoami(shared.clone()));
    assert_eq!(answered.unwrap(), first, "Whoami answers the worker's pid");

    let received: Arc<Vec<Mutex<Vec<Tick>>>> =
        Arc::new((0..STREAMS).map(|_| Mutex::default()).collect());
    let streams: Vec<_> = (0..STREAMS)
        .map(|index| {
            let (received, shared) = (received.clone(), shared.clone());
            runtime.spawn(async move {
                let channel = if index % 2 == 0 {
                    shared
                } else {
                    counter::connect(port).await.map_err(|e| e.to_string())?
                };
                let request = CountRequest {
                    n: TICKS,
                    interval_ms: INTERVAL_MS,
                };
                counter::count(channel, request, |tick| {
                    received[index].lock().unwrap().push(tick)
                })
                .await
                .map_err(|status| format!("{status:?}"))
            })
        })
        .collect();
    let echo = runtime.spawn({
        let shared = shared.clone();
        async move {
            let echoed = counter::echo(shared, ECHOES, Duration::from_millis(50)).await;
            (echoed, Instant::now())
        }
    });
    let ticks_of = |index: usize| received[index].lock().unwrap().len() as u32;
    wait_until(
        "the streams did not all start",
        wait,
        || (0..STREAMS).all(|i| ticks_of(i) > 0),
        &service,
    );

    // Restart while every stream is in flight; once the old worker says it drains, no stream
    // may have ended yet, or the test would prove nothing.
    let drains = service.log_count("stopped accepting; draining connections");
    let restarted = Instant::now();
    let second = service.restart();
    let restart_took = restarted.elapsed();
    wait_until(
        "the old worker never said it drains",
        wait,
        || service.log_count("stopped accepting; draining connections") > drains,
        &service,
    );
    let drain_seen = Instant::now();
    let at_drain: Vec<u32> = (0..STREAMS).map(ticks_of).collect();
    assert!(
        at_drain.iter().all(|n| *n < TICKS),
        "a stream ended before the drain began: {at_drain:?} of {TICKS} ticks"
    );
    // A second hand-over while the first old worker still drains its streams.
    let third = service.restart();
    assert!(
        first != second && second != third && first != third,
        "three workers: {first}, {second}, {third}"
    );

    for (index, stream) in streams.into_iter().enumerate() {
        let ended = block_on(&runtime, "a stream", Duration::from_secs(10), stream).unwrap();
        assert_eq!(ended, Ok(()), "stream {index} ended with status OK");
        let ticks = received[index].lock().unwrap();
        check_ticks(&format!("stream {index}"), &ticks, TICKS, first);
    }
    let streams_done = Instant::now();
    let (echoed, echo_done) = block_on(&runtime, "echo", Duration::from_secs(10), echo).unwrap();
    let echoed = echoed.expect("Echo ends with status OK");
    check_ticks("echo", &echoed, ECHOES, first);
    assert!(
        echo_done > drain_seen,
        "the echo call was in flight when the old worker drained"
    );

    // Its streams over, the old worker exits and the master reaps it (the middle one had
    // nothing to drain).
    let gone = |pid: u32| !std::path::Path::new(&format!("/proc/{pid}")).exists();
    wait_until(
        &format!("the old workers {first} and {second} did not exit"),
        wait,
        || gone(first) && gone(second),
        &service,
    );
    let old_exited = streams_done.elapsed();

    let fresh = block_on(&runtime, "connect", wait, counter::connect(port)).unwrap();
    let answered = block_on(&runtime, "whoami", wait, counter::whoami(fresh));
    assert_eq!(
        answered.unwrap(),
        third,
        "a new channel reaches the new worker"
    );
    // The channel the old worker sent its GOAWAY on connects again, to the new worker.
    let answered = block_on(&runtime, "whoami", wait, counter::whoami(shared));
    assert_eq!(
        answered.unwrap(),
        third,
        "the old channel reaches the new worker"
    );
    assert_eq!(service.worker_pid(), third);

    println!(
        "grpc: {STREAMS} streams × {TICKS} ticks ({INTERVAL_MS} ms apart) and {ECHOES} echoes, \
         all from pid {first}; ticks per stream when the drain began: {at_drain:?}; \
         workers {first} → {second} → {third}; restart took {restart_took:?}; \
         old workers gone {old_exited:?} after the streams ended; test took {:?}",
        began.elapsed()
    );
}

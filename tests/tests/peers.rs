//! What a network peer with no key can do to a real `lancer serve`: each test is one
//! attack on the connection's life or the server's memory, and each failed against the
//! code before the defence it names.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lancer::http::serve::{HEADER_READ_TIMEOUT, IDLE_TIMEOUT};
use lancer_tests::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The client preface every HTTP/2 connection opens with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const H2_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

fn addr_of(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

async fn connect(addr: &str) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// Reads until the server closes the socket; false if it is still open at `deadline`.
async fn closed_by(socket: &mut TcpStream, deadline: Instant) -> bool {
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// How long `/healthz` took to answer on a new connection, each time, while `during`
/// lasts.
async fn healthz_latencies(server: &Server, during: Duration) -> Vec<Duration> {
    let url = format!("{}/healthz", server.url);
    let until = Instant::now() + during;
    let mut latencies = Vec::new();
    while Instant::now() < until {
        // A new client each time: a new connection, as a new user would open.
        let client = reqwest::Client::new();
        let started = Instant::now();
        let answered = tokio::time::timeout(Duration::from_secs(5), client.get(&url).send()).await;
        let status = answered.map(|r| r.map(|r| r.status().as_u16()));
        assert!(
            matches!(status, Ok(Ok(200))),
            "/healthz went unanswered: {status:?}"
        );
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    latencies
}

#[tokio::test]
async fn silent_sockets_and_bare_http2_prefaces_never_keep_healthz_waiting_and_are_all_closed() {
    let server = Server::start(&[], &[]).await;
    let addr = addr_of(&server);
    let opened = Instant::now();
    let mut held = Vec::new();
    for _ in 0..1_100 {
        held.push(connect(&addr).await);
    }
    for _ in 0..100 {
        let mut socket = connect(&addr).await;
        socket.write_all(H2_PREFACE).await.expect("preface");
        held.push(socket);
    }
    let latencies = healthz_latencies(&server, HEADER_READ_TIMEOUT + Duration::from_secs(2)).await;
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    println!(
        "1,200 sockets held: /healthz answered {} times, slowest {slowest:?}",
        latencies.len()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "/healthz took {slowest:?} with 1,200 silent sockets open"
    );
    let deadline = opened + HEADER_READ_TIMEOUT + Duration::from_secs(5);
    let mut open = 0;
    for socket in &mut held {
        if !closed_by(socket, deadline).await {
            open += 1;
        }
    }
    assert_eq!(open, 0, "sockets still open past the header timeout");
    server.stop().await;
}

/// Asserts the server closes `socket`, just answered, once it has been idle for the idle
/// timeout, and not long before.
async fn closes_when_idle(socket: &mut TcpStream, what: &str) {
    let answered = Instant::now();
    let deadline = answered + IDLE_TIMEOUT + Duration::from_secs(4);
    assert!(closed_by(socket, deadline).await, "{what} stays open");
    assert!(
        answered.elapsed() >= IDLE_TIMEOUT - Duration::from_secs(1),
        "{what} was closed after {:?}",
        answered.elapsed()
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = Server::start(&[], &[]).await;
    let mut socket = connect(&addr_of(&server)).await;
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let mut answer = [0u8; 1024];
    let read = socket.read(&mut answer).await.expect("an answer");
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
    closes_when_idle(&mut socket, "an idle keep-alive connection").await;
    server.stop().await;
}

/// A HEADERS frame for `GET /healthz` on stream 1, ending the stream: the method, scheme
/// and authority from HPACK's static table, the path as a literal.
fn h2_get_healthz() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x41, 1, b'x', 0x44, 8];
    block.extend_from_slice(b"/healthz");
    let mut frame = vec![0, 0, block.len() as u8, 1, 0x05, 0, 0, 0, 1];
    frame.extend(block);
    frame
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let server = Server::start(&[], &[]).await;
    let mut socket = connect(&addr_of(&server)).await;
    socket.write_all(H2_PREFACE).await.expect("preface");
    socket.write_all(&H2_SETTINGS).await.expect("settings");
    socket.write_all(&h2_get_healthz()).await.expect("headers");
    // The answer's DATA frame carries the health body.
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"ok\"") {
        let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buffer))
            .await
            .expect("an answer over HTTP/2")
            .expect("read");
        assert!(read > 0, "closed before answering");
        seen.extend_from_slice(&buffer[..read]);
    }
    closes_when_idle(&mut socket, "an idle HTTP/2 connection").await;
    server.stop().await;
}

#[tokio::test]
async fn past_the_connection_limit_the_longest_idle_connection_makes_room() {
    let server = Server::start(&[], &[("LANCER_MAX_CONNECTIONS", "3")]).await;
    let addr = addr_of(&server);
    let mut oldest = connect(&addr).await;
    let _others = [connect(&addr).await, connect(&addr).await];
    let started = Instant::now();
    let health = reqwest::get(format!("{}/healthz", server.url))
        .await
        .expect("served");
    assert_eq!(health.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        closed_by(&mut oldest, Instant::now() + Duration::from_secs(2)).await,
        "the oldest silent connection was closed to make room"
    );
    server.stop().await;
}

/// `count` connections each in the middle of a request: headers sent, body unfinished.
async fn busy_connections(server: &Server, count: usize) -> Vec<TcpStream> {
    let mut busy = Vec::new();
    for _ in 0..count {
        let mut socket = connect(&addr_of(server)).await;
        socket
            .write_all(b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            .await
            .expect("write");
        busy.push(socket);
    }
    busy
}

#[tokio::test]
async fn connections_past_the_limit_wait_while_every_connection_is_busy() {
    let server = Server::start(&[], &[("LANCER_MAX_CONNECTIONS", "3")]).await;
    let mut held = busy_connections(&server, 3).await;
    // Each request reaches its handler before the fourth client arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = format!("{}/healthz", server.url);
    let waiting = tokio::spawn(async move { reqwest::get(health).await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !waiting.is_finished(),
        "a fourth connection is not served while three requests are in flight"
    );
    drop(held.pop());
    let status = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once a connection closed")
        .expect("join")
        .expect("answered");
    assert_eq!(status, 200);
    server.stop().await;
}

/// The number of series lines in a `/metrics` scrape, and its size.
async fn series_in(server: &Server) -> (usize, usize) {
    let text = reqwest::get(format!("{}/metrics", server.url))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let series = text.lines().filter(|line| !line.starts_with('#')).count();
    (series, text.len())
}

/// A method no standard names, and a path, both new each time.
fn junk_request(i: u64) -> (reqwest::Method, String) {
    let method = format!("J{:X}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let path = match i % 4 {
        0 => format!("/wp-{i}.php"),
        1 => format!("/api/v1/tasks/{i}"),
        2 => format!("/api/v1/nothing/{i}/here"),
        _ => format!("/console/{i}.js"),
    };
    (
        reqwest::Method::from_bytes(method.as_bytes()).expect("a token"),
        path,
    )
}

async fn send_junk(server: &Server, range: std::ops::Range<u64>) {
    let http = reqwest::Client::new();
    futures::stream::iter(range)
        .map(|i| {
            let (method, path) = junk_request(i);
            let request = http.request(method, format!("{}{path}", server.url));
            async move { request.send().await.map(|r| r.status()) }
        })
        .buffer_unordered(8)
        .for_each(|answered| async move {
            let status = answered.expect("answered");
            assert!(status.is_client_error(), "{status}");
        })
        .await;
}

#[tokio::test]
async fn junk_methods_and_paths_add_no_metric_series() {
    let server = Server::start(&[], &[]).await;
    send_junk(&server, 0..100).await;
    // The first scrape's own request is a series of its own.
    series_in(&server).await;
    let (before, size_before) = series_in(&server).await;
    send_junk(&server, 100..10_100).await;
    let (after, size_after) = series_in(&server).await;
    println!(
        "10,000 junk requests: {before} series ({size_before} bytes) before, {after} ({size_after} bytes) after"
    );
    assert_eq!(after, before, "every label comes from a closed set");
    server.stop().await;
}

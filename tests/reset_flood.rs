//! The HTTP/2 reset-flood guard: a raw client that makes the server reset
//! stream after stream (a malformed request is a stream error the server
//! answers with RST_STREAM) is cut off, while a normal client keeps being
//! served. tonic leaves this guard off unless it is set explicitly.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{check, Server};

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_flood_is_cut_off_and_normal_clients_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let addr = server.addr.trim_start_matches("http://").to_owned();
    let mut authorize = server.authorize().await;

    let flood = tokio::task::spawn_blocking(move || {
        let mut socket = std::net::TcpStream::connect(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        socket
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .unwrap();
        socket.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
        // Only `:method GET` (HPACK static index 2): a malformed request, which
        // the server must answer by resetting the stream.
        let request = [0x82];
        let mut sent = 0u32;
        let mut batch = Vec::new();
        let started = Instant::now();
        let mut cut_off = false;
        for stream in (1u32..).step_by(2).take(20_000) {
            batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &request));
            sent += 1;
            if sent % 100 == 0 {
                if socket.write_all(&batch).is_err() {
                    cut_off = true;
                    break;
                }
                batch.clear();
            }
        }
        // Read what the server said until it closes the connection.
        let mut goaway = None;
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            match socket.read(&mut chunk) {
                Ok(0) => {
                    cut_off = true;
                    break;
                }
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                Err(error)
                    if error.kind() == std::io::ErrorKind::WouldBlock
                        || error.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break
                }
                Err(_) => {
                    cut_off = true;
                    break;
                }
            }
        }
        let mut offset = 0;
        while offset + 9 <= buffer.len() {
            let length =
                u32::from_be_bytes([0, buffer[offset], buffer[offset + 1], buffer[offset + 2]])
                    as usize;
            if buffer[offset + 3] == GOAWAY {
                let payload = &buffer[offset + 9..offset + 9 + length];
                goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            }
            offset += 9 + length;
        }
        (sent, cut_off, goaway, started.elapsed())
    });

    // A normal client keeps working during the flood.
    let mut served = 0;
    while !flood.is_finished() {
        let response = authorize
            .check(check("", &["mail.send"]))
            .await
            .unwrap()
            .into_inner();
        assert!(!response.allowed);
        served += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (sent, cut_off, goaway, elapsed) = flood.await.unwrap();
    assert!(
        cut_off,
        "the flooding connection was not closed after {sent} resets ({elapsed:?})"
    );
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "GOAWAY error code");
    assert!(served > 0);
    assert!(
        authorize.check(check("", &["mail.send"])).await.is_ok(),
        "still serving after the flood"
    );
}

//! The `:authority` fix on hand-built client bytes, in every chunking.

use super::*;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_frame_header(&mut out, payload.len(), kind, flags, stream.to_be_bytes());
    out.put_slice(payload);
    out.to_vec()
}

fn request(authority: &str, path: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect()
}

/// A client connection: preface, SETTINGS, then for each request a
/// HEADERS block (dynamic table in use, as real clients do) and a DATA frame.
fn client_bytes(requests: &[Vec<(Vec<u8>, Vec<u8>)>], split_headers: bool) -> Vec<u8> {
    let mut encoder = loona_hpack::Encoder::new();
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    for (n, headers) in requests.iter().enumerate() {
        let stream = 1 + 2 * n as u32;
        let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        if split_headers {
            let (first, second) = block.split_at(block.len() / 2);
            // PADDED + PRIORITY on the HEADERS frame, the rest in a CONTINUATION.
            let mut payload = vec![3u8];
            payload.extend([0, 0, 0, 0, 16]);
            payload.extend(first);
            payload.extend([0, 0, 0]);
            out.extend(frame(HEADERS, PADDED | PRIORITY, stream, &payload));
            out.extend(frame(CONTINUATION, END_HEADERS, stream, second));
        } else {
            out.extend(frame(HEADERS, END_HEADERS, stream, &block));
        }
        out.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\0"));
    }
    out
}

/// What a server reading `bytes` decodes: each block's headers.
fn server_view(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    assert_eq!(&bytes[..PREFACE.len()], PREFACE);
    let mut decoder = loona_hpack::Decoder::new();
    let mut at = PREFACE.len();
    let mut blocks = Vec::new();
    let mut pending = Vec::new();
    while at < bytes.len() {
        let (kind, length) = frame_at(bytes, at).unwrap();
        let flags = bytes[at + 4];
        let payload = &bytes[at + FRAME_HEADER..at + FRAME_HEADER + length];
        if kind == HEADERS || kind == CONTINUATION {
            let mut payload = payload;
            let mut padding = 0;
            if kind == HEADERS && flags & PADDED != 0 {
                padding = payload[0] as usize;
                payload = &payload[1..];
            }
            if kind == HEADERS && flags & PRIORITY != 0 {
                payload = &payload[5..];
            }
            pending.extend_from_slice(&payload[..payload.len() - padding]);
            if flags & END_HEADERS != 0 {
                let mut headers = Vec::new();
                decoder
                    .decode_with_cb(&pending, |n, v| headers.push((n.to_vec(), v.to_vec())))
                    .unwrap();
                blocks.push(headers);
                pending.clear();
            }
        }
        at += FRAME_HEADER + length;
    }
    blocks
}

fn run(input: &[u8], chunk: usize) -> (Vec<u8>, bool) {
    let mut fix = AuthorityFix::default();
    for piece in input.chunks(chunk) {
        fix.push(piece);
    }
    let rewriting = fix.rewriting();
    fix.finish();
    (fix.output().to_vec(), rewriting)
}

#[test]
fn a_valid_authority_passes_through_byte_for_byte() {
    let requests = [request("localhost", "/a/B"), request("localhost", "/a/C")];
    let input = client_bytes(&requests, false);
    for chunk in [1, 7, 4096] {
        let (output, rewriting) = run(&input, chunk);
        assert_eq!(output, input, "chunk {chunk}");
        assert!(!rewriting);
    }
}

#[test]
fn a_socket_path_authority_becomes_localhost_on_every_request() {
    for authority in ["/tmp/scopegate.sock", "%2Ftmp%2Fscopegate.sock"] {
        let requests: Vec<_> = (0..5)
            .map(|n| request(authority, &format!("/a/{n}")))
            .collect();
        for split in [false, true] {
            let input = client_bytes(&requests, split);
            for chunk in [1, 5, 100, 1 << 20] {
                let (output, rewriting) = run(&input, chunk);
                assert!(rewriting);
                let blocks = server_view(&output);
                assert_eq!(blocks.len(), requests.len());
                for (block, sent) in blocks.iter().zip(&requests) {
                    let expected: Vec<_> = sent
                        .iter()
                        .map(|(n, v)| {
                            let v = if n == b":authority" {
                                AUTHORITY.to_vec()
                            } else {
                                v.clone()
                            };
                            (n.clone(), v)
                        })
                        .collect();
                    assert_eq!(block, &expected, "{authority} split {split} chunk {chunk}");
                }
            }
        }
    }
}

#[test]
fn a_large_rewritten_block_is_split_into_continuations() {
    let mut headers = request("/tmp/s.sock", "/a/B");
    headers.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
    let mut encoder = loona_hpack::Encoder::new();
    let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
    let mut input = PREFACE.to_vec();
    let mut rest = &block[..];
    let mut kind = HEADERS;
    while !rest.is_empty() {
        let take = rest.len().min(MAX_FRAME);
        let flags = if take == rest.len() { END_HEADERS } else { 0 };
        input.extend(frame(kind, flags, 1, &rest[..take]));
        rest = &rest[take..];
        kind = CONTINUATION;
    }
    // Past the production limit: only a server configured for larger
    // header lists would get here.
    let mut fix = AuthorityFix {
        max_header_list: 64 * 1024,
        ..AuthorityFix::default()
    };
    for piece in input.chunks(3000) {
        fix.push(piece);
    }
    let rewriting = fix.rewriting();
    fix.finish();
    let output = fix.output().to_vec();
    assert!(rewriting);
    let blocks = server_view(&output);
    assert_eq!(blocks[0].last().unwrap().1.len(), 40_000);
    assert_eq!(blocks[0][3], (b":authority".to_vec(), AUTHORITY.to_vec()));
}

/// A block in hundreds of tiny CONTINUATIONs, read a byte at a time:
/// the scan resumes where it stopped, yet checks every frame.
#[test]
fn a_block_in_many_continuations_is_scanned_across_reads() {
    let mut encoder = loona_hpack::Encoder::new();
    let headers = request("/tmp/s.sock", "/a/B");
    let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
    let pieces: Vec<&[u8]> = block.chunks(1).collect();
    let frames = |bad_at: Option<usize>| {
        let mut input = PREFACE.to_vec();
        for (n, piece) in pieces.iter().enumerate() {
            let kind = if n == 0 { HEADERS } else { CONTINUATION };
            let flags = if n + 1 == pieces.len() {
                END_HEADERS
            } else {
                0
            };
            let stream = if Some(n) == bad_at { 3 } else { 1 };
            input.extend(frame(kind, flags, stream, piece));
        }
        input
    };
    let input = frames(None);
    for chunk in [1, 2, 10, 1 << 20] {
        let (output, rewriting) = run(&input, chunk);
        assert!(rewriting, "chunk {chunk}");
        let blocks = server_view(&output);
        assert_eq!(blocks[0][3], (b":authority".to_vec(), AUTHORITY.to_vec()));
        assert_eq!(blocks[0][2], (b":path".to_vec(), b"/a/B".to_vec()));
    }
    // A CONTINUATION of another stream late in the block: not a block.
    let bad = frames(Some(pieces.len() - 2));
    for chunk in [1, 9, 1 << 20] {
        let (output, rewriting) = run(&bad, chunk);
        assert!(!rewriting, "chunk {chunk}");
        assert_eq!(output, bad, "chunk {chunk}");
    }
}

/// Clients Huffman-code header strings (grpc-core does). The vendored
/// HPACK decoder's Huffman tables (vendor/README.md) against RFC 7541's
/// own examples (Appendix C.4, C.6.1) and its three decoding errors.
#[test]
fn huffman_coded_headers_decode_as_rfc_7541_says() {
    fn hex(text: &str) -> Vec<u8> {
        let digits: String = text.split_whitespace().collect();
        (0..digits.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&digits[at..at + 2], 16).unwrap())
            .collect()
    }
    fn decode(decoder: &mut loona_hpack::Decoder, block: &str) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        decoder
            .decode_with_cb(&hex(block), |name, value| {
                let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).unwrap();
                headers.push((text(&name), text(&value)));
            })
            .unwrap();
        headers
    }
    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }
    // C.4: three requests on one connection, so the dynamic table too.
    let mut decoder = loona_hpack::Decoder::new();
    let c41 = "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff";
    let c42 = "8286 84be 5886 a8eb 1064 9cbf";
    let c43 = "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf";
    let first = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ];
    assert_eq!(decode(&mut decoder, c41), pairs(&first));
    let mut second = first.to_vec();
    second.push(("cache-control", "no-cache"));
    assert_eq!(decode(&mut decoder, c42), pairs(&second));
    let third = [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ];
    assert_eq!(decode(&mut decoder, c43), pairs(&third));
    // C.6.1: longer codes (digits, punctuation, capitals).
    let c61 = "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 \
               0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3";
    let response = [
        (":status", "302"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("location", "https://www.example.com"),
    ];
    let mut decoder = loona_hpack::Decoder::new();
    assert_eq!(decode(&mut decoder, c61), pairs(&response));
    // The three errors of RFC 7541 §5.2.
    use loona_hpack::huffman::{HuffmanDecoder, HuffmanDecoderError as Error};
    for (string, error) in [
        ("ffff ffff", Error::EOSInString),
        ("ff", Error::PaddingTooLarge),
        ("00", Error::InvalidPadding),
    ] {
        assert_eq!(
            HuffmanDecoder::new().decode(&hex(string)),
            Err(error),
            "{string}"
        );
    }
}

#[test]
fn what_is_not_http2_or_does_not_decode_reaches_h2_unchanged() {
    let not_h2 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    assert_eq!(run(&not_h2, 3).0, not_h2);
    let mut garbage = PREFACE.to_vec();
    garbage.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff]));
    assert_eq!(run(&garbage, 2).0, garbage);
    let mut oversized = PREFACE.to_vec();
    oversized.extend([0xff, 0xff, 0xff, HEADERS, END_HEADERS, 0, 0, 0, 1]);
    assert_eq!(run(&oversized, 4).0, oversized);
    let truncated = &client_bytes(&[request("/tmp/s", "/a")], false)[..40];
    assert_eq!(run(truncated, 1).0, truncated);
}

#[test]
fn a_rewritten_connection_breaks_rather_than_pass_raw_blocks() {
    let mut input = client_bytes(&[request("/tmp/s.sock", "/a")], false);
    let rewritten_len = run(&input, 1 << 20).0.len();
    // A second block that does not decode (index 70 is in no table).
    input.extend(frame(HEADERS, END_HEADERS, 3, &[0x80 | 70]));
    input.extend(frame(0x0, END_STREAM, 3, b"\0"));
    let mut fix = AuthorityFix::default();
    fix.push(&input);
    assert!(fix.broken());
    fix.finish();
    // What was rewritten before stays; nothing raw follows it.
    assert_eq!(fix.output().len(), rewritten_len);
}

/// One small block that references a 4 KiB dynamic-table entry thousands
/// of times would decode to many megabytes: the fix stops at the header
/// list limit and breaks the connection, whatever the chunking.
#[test]
fn a_header_block_that_decodes_huge_breaks_the_connection() {
    let mut encoder = loona_hpack::Encoder::new();
    let big = vec![b'x'; 4000];
    let mut first = request("/tmp/scopegate.sock", "/a/B");
    first.push((b"x-big".to_vec(), big));
    let mut input = PREFACE.to_vec();
    input.extend(frame(0x4, 0, 0, &[]));
    let block = encoder.encode(first.iter().map(|(n, v)| (&n[..], &v[..])));
    input.extend(frame(HEADERS, END_HEADERS, 1, &block));
    // Index 62: the newest dynamic-table entry (x-big), 4,000 times.
    input.extend(frame(HEADERS, END_HEADERS, 3, &[0xbe; 4000]));
    for chunk in [7, 1 << 20] {
        let mut fix = AuthorityFix::default();
        for piece in input.chunks(chunk) {
            fix.push(piece);
        }
        assert!(fix.broken(), "chunk {chunk}");
        assert!(
            fix.output().len() < 2 * MAX_HEADER_LIST + 8192,
            "chunk {chunk}: {} bytes held for h2",
            fix.output().len()
        );
    }
}

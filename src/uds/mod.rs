//! Unix-socket connections that every gRPC client can use.
//!
//! hyper's HTTP/2 (h2) resets any stream whose `:authority` is not a valid
//! URI authority, with PROTOCOL_ERROR, before tonic sees it
//! (hyperium/h2#487, open). Over a Unix socket several common clients send
//! one: grpcio/grpc-core ≥ 1.57 the %-encoded socket path, grpcurl 1.8 and
//! grpc-java the raw path. Envoy, tonic and grpc-go send a host name.
//!
//! [`UdsConnection`] sits under h2 and looks at the first header block of a
//! connection. If its `:authority` is acceptable (or absent), every byte
//! from then on passes through untouched: the clients that already worked
//! pay one decoded header block per connection. Otherwise the connection is
//! rewritten for its whole life: each header block is decoded (HPACK, with
//! the client's dynamic table) and encoded again as plain literals that never
//! touch h2's table, with `:authority: localhost`. Only the client → server
//! direction is read; frames other than HEADERS/CONTINUATION are copied as is.
//! Anything unexpected before the first block (a bad preface, an oversized
//! frame, a block that does not decode) is handed to h2 unchanged, which
//! answers it as it would have; on a connection being rewritten it closes the
//! connection instead (raw bytes would no longer match h2's HPACK table).

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

/// What a rewritten connection says instead of the socket path.
pub const AUTHORITY: &[u8] = b"localhost";

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
/// HTTP/2's default SETTINGS_MAX_FRAME_SIZE, which scopegate never raises.
const MAX_FRAME: usize = 16_384;
/// A header block (HEADERS + CONTINUATION) larger than this is passed to h2
/// as is (which refuses it: its header list limit is smaller).
const MAX_BLOCK: usize = 64 * 1024;
/// h2's (and HTTP/2's default) SETTINGS_HEADER_TABLE_SIZE.
const TABLE_SIZE: usize = 4096;
/// The largest decoded header list (RFC 9113's size: name + value + 32 per
/// field) a block may have: hyper's server default, which tonic keeps. A
/// block that references a 4 KiB table entry thousands of times decodes to
/// far more than it weighs on the wire; decoding stops here and the
/// connection is closed, so memory stays bounded.
pub const MAX_HEADER_LIST: usize = 16 * 1024;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Preface,
    /// Until the first header block.
    Inspect,
    PassThrough,
    Rewrite,
    /// A rewritten connection sent something that cannot be rewritten: its
    /// raw bytes would reach h2 encoded against a table h2 never saw, so
    /// the connection is closed instead.
    Broken,
}

/// The client → server byte stream of one connection, as h2 should see it.
pub struct AuthorityFix {
    mode: Mode,
    decoder: loona_hpack::Decoder<'static>,
    /// Bytes read from the client, not yet looked at.
    input: BytesMut,
    /// Bytes ready for h2.
    output: BytesMut,
    /// How far the header block at the start of `input` has been checked
    /// (see [`header_block`]).
    scanned: usize,
    /// [`MAX_HEADER_LIST`] (tests may raise it).
    max_header_list: usize,
}

impl Default for AuthorityFix {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        AuthorityFix {
            mode: Mode::Preface,
            decoder,
            input: BytesMut::new(),
            output: BytesMut::new(),
            scanned: 0,
            max_header_list: MAX_HEADER_LIST,
        }
    }
}

impl AuthorityFix {
    /// Whether this connection's header blocks are (or were, until it
    /// broke) being rewritten.
    pub fn rewriting(&self) -> bool {
        matches!(self.mode, Mode::Rewrite | Mode::Broken)
    }

    /// The connection must be closed (see `Mode::Broken`).
    pub fn broken(&self) -> bool {
        self.mode == Mode::Broken
    }

    /// Takes bytes from the client; what h2 may read is then in
    /// [`AuthorityFix::output`].
    pub fn push(&mut self, bytes: &[u8]) {
        if self.mode == Mode::Broken {
            return;
        }
        if self.mode == Mode::PassThrough {
            self.output.extend_from_slice(bytes);
            return;
        }
        self.input.extend_from_slice(bytes);
        self.process();
    }

    /// The client closed its side: whatever is held back goes to h2 as is.
    pub fn finish(&mut self) {
        if self.mode == Mode::Broken {
            return;
        }
        let rest = self.input.split();
        self.output.extend_from_slice(&rest);
        self.mode = Mode::PassThrough;
    }

    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.output
    }

    /// Hands everything from here on to h2 unchanged; on a connection being
    /// rewritten that would desynchronise HPACK, so it breaks instead.
    fn pass_through(&mut self) {
        if self.mode == Mode::Rewrite {
            self.mode = Mode::Broken;
            self.input.clear();
            return;
        }
        self.mode = Mode::PassThrough;
        let rest = self.input.split();
        self.output.extend_from_slice(&rest);
    }

    fn process(&mut self) {
        if self.mode == Mode::Preface {
            let seen = self.input.len().min(PREFACE.len());
            if self.input[..seen] != PREFACE[..seen] {
                return self.pass_through();
            }
            if seen < PREFACE.len() {
                return;
            }
            let preface = self.input.split_to(PREFACE.len());
            self.output.extend_from_slice(&preface);
            self.mode = Mode::Inspect;
        }
        while matches!(self.mode, Mode::Inspect | Mode::Rewrite) {
            let Some((kind, length)) = frame_at(&self.input, 0) else {
                return;
            };
            if length > MAX_FRAME {
                return self.pass_through();
            }
            if kind != HEADERS {
                if self.input.len() < FRAME_HEADER + length {
                    return;
                }
                let frame = self.input.split_to(FRAME_HEADER + length);
                self.output.extend_from_slice(&frame);
                continue;
            }
            match header_block(&self.input, &mut self.scanned) {
                Block::Incomplete => return,
                Block::Invalid => return self.pass_through(),
                Block::Complete {
                    len,
                    fragments,
                    frame,
                } => {
                    let Some(block) = self.reencode(&fragments) else {
                        if self.mode == Mode::Broken {
                            return;
                        }
                        // Not decodable, or (first block) nothing to fix:
                        // h2 gets this block and all that follows as sent.
                        return self.pass_through();
                    };
                    write_headers(&frame, &block, &mut self.output);
                    self.input.advance(len);
                    self.scanned = 0;
                }
            }
        }
    }

    /// Decodes one header block (keeping the client's HPACK table in step)
    /// and returns it encoded again with the `:authority` fixed. `None`: it
    /// does not decode, or it is the first block and needs no fix.
    fn reencode(&mut self, fragment: &[u8]) -> Option<Vec<u8>> {
        let mut block = Vec::with_capacity(fragment.len() + 32);
        let mut bad_authority = false;
        let mut list_size = 0;
        let max = self.max_header_list;
        self.decoder
            .decode_with_cb(fragment, |name, value| {
                list_size += name.len() + value.len() + 32;
                if list_size > max {
                    return; // nothing more is kept; the connection breaks below
                }
                let value: Cow<[u8]> = if name.as_ref() == b":authority"
                    && http::uri::Authority::try_from(value.as_ref()).is_err()
                {
                    bad_authority = true;
                    Cow::Borrowed(AUTHORITY)
                } else {
                    value
                };
                literal_without_indexing(name.as_ref(), value.as_ref(), &mut block);
            })
            .ok()?;
        if list_size > max {
            tracing::debug!(
                list_size,
                "a unix socket client sent a header list over the limit; closing the connection"
            );
            self.mode = Mode::Broken;
            self.input.clear();
            return None;
        }
        if self.mode == Mode::Inspect {
            if !bad_authority {
                return None;
            }
            tracing::debug!(
                "a unix socket client sent an invalid :authority; rewriting it to localhost"
            );
            self.mode = Mode::Rewrite;
        }
        Some(block)
    }
}

/// (type, payload length) of the frame starting at `at`, if its header is in.
fn frame_at(input: &[u8], at: usize) -> Option<(u8, usize)> {
    let header = input.get(at..at + FRAME_HEADER)?;
    let length =
        (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
    Some((header[3], length))
}

/// What the HEADERS frame that opens a block said, minus its fragment.
struct HeadersFrame {
    stream: [u8; 4],
    end_stream: bool,
    /// The 5 priority bytes, if the frame carried them.
    priority: Option<[u8; 5]>,
}

enum Block {
    Incomplete,
    /// Not a well-formed block: left for h2 to refuse.
    Invalid,
    Complete {
        len: usize,
        fragments: Vec<u8>,
        frame: HeadersFrame,
    },
}

/// Parses the HEADERS frame at the start of `input` and its CONTINUATIONs.
/// `scanned` carries, between calls on a growing `input`, where the first
/// CONTINUATION not yet checked starts (0 at a block's start), so a block
/// that arrives in many small reads is walked once, and its fragments are
/// copied once, when it is complete.
fn header_block(input: &[u8], scanned: &mut usize) -> Block {
    let Some((_, length)) = frame_at(input, 0) else {
        return Block::Incomplete;
    };
    let first = FRAME_HEADER + length;
    if input.len() < first {
        return Block::Incomplete;
    }
    let flags = input[4];
    let stream: [u8; 4] = input[5..9].try_into().expect("4 bytes");
    let Some((fragment, priority)) = headers_payload(flags, &input[FRAME_HEADER..first]) else {
        return Block::Invalid;
    };
    // Past `first`, every frame up to `scanned` was a CONTINUATION of this
    // stream without END_HEADERS.
    let mut at = (*scanned).max(first);
    let mut end = at == first && flags & END_HEADERS != 0;
    while !end {
        let Some((kind, length)) = frame_at(input, at) else {
            *scanned = at;
            return Block::Incomplete;
        };
        if kind != CONTINUATION || input[at + 5..at + 9] != stream || length > MAX_FRAME {
            return Block::Invalid;
        }
        if input.len() < at + FRAME_HEADER + length {
            *scanned = at;
            return Block::Incomplete;
        }
        end = input[at + 4] & END_HEADERS != 0;
        at += FRAME_HEADER + length;
        if at > MAX_BLOCK {
            return Block::Invalid;
        }
    }
    let mut fragments = fragment.to_vec();
    let mut next = first;
    while next < at {
        let (_, length) = frame_at(input, next).expect("checked above");
        fragments.extend_from_slice(&input[next + FRAME_HEADER..next + FRAME_HEADER + length]);
        next += FRAME_HEADER + length;
    }
    Block::Complete {
        len: at,
        fragments,
        frame: HeadersFrame {
            stream,
            end_stream: flags & END_STREAM != 0,
            priority,
        },
    }
}

/// A HEADERS frame's fragment and priority bytes, without its padding;
/// `None` if the padding or priority do not fit.
fn headers_payload(flags: u8, mut payload: &[u8]) -> Option<(&[u8], Option<[u8; 5]>)> {
    let mut padding = 0;
    if flags & PADDED != 0 {
        let (&pad, rest) = payload.split_first()?;
        padding = usize::from(pad);
        payload = rest;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        priority = Some(payload.get(..5)?.try_into().expect("5 bytes"));
        payload = &payload[5..];
    }
    let fragment = payload.get(..payload.len().checked_sub(padding)?)?;
    Some((fragment, priority))
}

/// HPACK "literal header field without indexing, new name", no Huffman.
fn literal_without_indexing(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    hpack_string(name, out);
    hpack_string(value, out);
}

fn hpack_string(bytes: &[u8], out: &mut Vec<u8>) {
    // 7-bit prefix integer (RFC 7541 §5.1), H bit clear.
    let mut length = bytes.len();
    if length < 0x7f {
        out.push(length as u8);
    } else {
        out.push(0x7f);
        length -= 0x7f;
        while length >= 0x80 {
            out.push((length as u8 & 0x7f) | 0x80);
            length >>= 7;
        }
        out.push(length as u8);
    }
    out.extend_from_slice(bytes);
}

/// One HEADERS frame and as many CONTINUATIONs as `block` needs.
fn write_headers(frame: &HeadersFrame, block: &[u8], out: &mut BytesMut) {
    let prefix = if frame.priority.is_some() { 5 } else { 0 };
    let first = block.len().min(MAX_FRAME - prefix);
    let mut flags = 0;
    if frame.end_stream {
        flags |= END_STREAM;
    }
    if frame.priority.is_some() {
        flags |= PRIORITY;
    }
    if first == block.len() {
        flags |= END_HEADERS;
    }
    put_frame_header(out, prefix + first, HEADERS, flags, frame.stream);
    if let Some(priority) = frame.priority {
        out.put_slice(&priority);
    }
    out.put_slice(&block[..first]);
    let mut rest = &block[first..];
    while !rest.is_empty() {
        let take = rest.len().min(MAX_FRAME);
        let flags = if take == rest.len() { END_HEADERS } else { 0 };
        put_frame_header(out, take, CONTINUATION, flags, frame.stream);
        out.put_slice(&rest[..take]);
        rest = &rest[take..];
    }
}

fn put_frame_header(out: &mut BytesMut, length: usize, kind: u8, flags: u8, stream: [u8; 4]) {
    out.put_slice(&[
        (length >> 16) as u8,
        (length >> 8) as u8,
        length as u8,
        kind,
        flags,
    ]);
    out.put_slice(&stream);
}

/// A Unix socket connection with the `:authority` fix applied to what the
/// server reads; writes go straight to the socket.
pub struct UdsConnection {
    stream: UnixStream,
    fix: AuthorityFix,
    /// Set once the connection passes through: reads then go straight to
    /// the socket once the held-back bytes are drained.
    direct: bool,
}

impl UdsConnection {
    pub fn new(stream: UnixStream) -> UdsConnection {
        UdsConnection {
            stream,
            fix: AuthorityFix::default(),
            direct: false,
        }
    }
}

impl AsyncRead for UdsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let ready = this.fix.output();
            if !ready.is_empty() {
                let take = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..take]);
                ready.advance(take);
                return Poll::Ready(Ok(()));
            }
            if this.direct {
                return Pin::new(&mut this.stream).poll_read(cx, buf);
            }
            if this.fix.broken() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a unix socket client sent a header block that cannot be rewritten",
                )));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.stream).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    this.fix.finish();
                    if this.fix.output().is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => {
                    this.fix.push(read.filled());
                    this.direct = this.fix.mode == Mode::PassThrough;
                }
            }
        }
    }
}

impl AsyncWrite for UdsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for UdsConnection {
    type ConnectInfo = <UnixStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests;

//! One client connection: read frames, decode, run handlers, write answers in request order.
//!
//! Clients pipeline (up to 5 in flight by default); each request is started as its own task as
//! soon as it is read, so a produce waiting for fdatasync does not hold up the next request,
//! while a FIFO of the tasks makes the answers leave in the order the requests came. The FIFO
//! is bounded (`inflight_requests_per_connection_max`): when full, reading stops.
//!
//! Bad input closes the connection (as Kafka does): a frame size below the minimum or over
//! `socket.request.max.bytes`, an unknown API key, an unsupported version of any API but
//! ApiVersions (which answers UNSUPPORTED_VERSION at v0, KIP-511), or a body that does not
//! decode. Nothing a client sends can panic the broker.

use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::task::JoinHandle;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::handlers::{self, Outcome};
use crate::send;
use crate::shard::Shard;

/// Request header fields every handler may need.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
}

pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // A second handle on the same socket lets the writer task send while the reader reads.
    let dup = unsafe { libc::dup(stream.as_raw_fd()) };
    if dup < 0 {
        return;
    }
    // SAFETY: `dup` is a fresh descriptor for a connected TCP socket that nothing else owns.
    let writer = unsafe { TcpStream::from_raw_fd(dup) };
    let (queue_tx, queue_rx) = local_channel::new_bounded::<JoinHandle<Outcome>>(
        sluice_core::limits::inflight_requests_per_connection_max,
    );
    let zerocopy = shard.broker.socket_send_zerocopy;
    let writer_task = glommio::spawn_local(write_answers(writer, queue_rx, zerocopy));
    let mut reader = stream;
    loop {
        let frame = match read_frame(&mut reader, shard.broker.socket_request_max_bytes).await {
            Some(frame) => frame,
            None => break,
        };
        let Some((ctx, request)) = decode_request(frame) else {
            break;
        };
        let task = handlers::start(&shard, ctx, request);
        shard.inflight.set(shard.inflight.get() + 1);
        let counted = shard.clone();
        let handle = glommio::spawn_local(async move {
            let outcome = task.await;
            counted.inflight.set(counted.inflight.get() - 1);
            outcome
        })
        .detach();
        if queue_tx.send(handle).await.is_err() {
            break;
        }
    }
    drop(queue_tx);
    writer_task.await;
}

async fn write_answers(
    mut writer: TcpStream,
    queue: local_channel::LocalReceiver<JoinHandle<Outcome>>,
    zerocopy: bool,
) {
    while let Some(handle) = queue.recv().await {
        match handle.await {
            Some(Outcome::Respond(frame)) => {
                if writer.write_all(&frame).await.is_err() {
                    break;
                }
            }
            Some(Outcome::RespondParts(parts)) => {
                if send::send_parts(&mut writer, parts, zerocopy)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Some(Outcome::NoResponse) => {}
            Some(Outcome::Close) | None => break,
        }
    }
    let _ = writer.close().await;
}

/// Reads one size-prefixed frame; None on EOF, error, or a size outside the allowed range.
///
/// The body is received straight into the frame's uninitialised capacity with `recv(2)`
/// (MSG_DONTWAIT), waiting for readability with glommio's `peek` when the socket is empty: a
/// zero-filled buffer would cost a full extra pass over every produced byte (it was the largest
/// item in the produce flamegraph).
async fn read_frame(reader: &mut TcpStream, max_bytes: usize) -> Option<Bytes> {
    let mut size = [0u8; 4];
    reader.read_exact(&mut size).await.ok()?;
    let size = i32::from_be_bytes(size);
    // api_key + api_version + correlation_id + client_id length at the least.
    if size < 10 || size as usize > max_bytes {
        return None;
    }
    let size = size as usize;
    let mut frame = BytesMut::with_capacity(size);
    let fd = reader.as_raw_fd();
    while frame.len() < size {
        let want = size - frame.len();
        let spare = frame.spare_capacity_mut();
        // SAFETY: recv writes at most `want` (≤ spare.len()) bytes through a raw pointer into
        // memory this BytesMut owns; no reference to uninitialised bytes is formed.
        let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), want, libc::MSG_DONTWAIT) };
        if n > 0 {
            // SAFETY: the kernel initialised exactly `n` more bytes.
            unsafe { frame.set_len(frame.len() + n as usize) };
            continue;
        }
        if n == 0 {
            return None; // the client went away mid-frame
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => {
                // Wait until at least one byte is readable (or EOF, which peek reports as 0).
                let mut probe = [0u8; 1];
                if reader.peek(&mut probe).await.ok()? == 0 {
                    return None;
                }
            }
            _ => return None,
        }
    }
    Some(frame.freeze())
}

/// Decodes a whole frame (without its size prefix): header and body. None when the connection
/// must close. Pure and total over any input: the fuzz target drives it.
pub fn decode_request(frame: Bytes) -> Option<(RequestContext, handlers::Request)> {
    let (ctx, body) = parse_request(frame)?;
    let request = handlers::decode_body(&ctx, body)?;
    Some((ctx, request))
}

/// Decodes the request header; None when the connection must close. An unsupported version of
/// ApiVersions is let through so its handler can answer per KIP-511.
fn parse_request(frame: Bytes) -> Option<(RequestContext, Bytes)> {
    let mut peek = frame.get(..4)?;
    let key = peek.get_i16();
    let version = peek.get_i16();
    let api_key = ApiKey::try_from(key).ok()?;
    let supported = handlers::supported(api_key)?;
    let in_range = version >= supported.0 && version <= supported.1;
    if !in_range && api_key != ApiKey::ApiVersions {
        return None;
    }
    let mut body = frame;
    // An ApiVersions request at a version we do not know is decoded with header v1 (the
    // non-flexible header every version shares up to client_id), which is all KIP-511 needs.
    let header_version = if in_range {
        api_key.request_header_version(version)
    } else {
        1
    };
    let header = RequestHeader::decode(&mut body, header_version).ok()?;
    let ctx = RequestContext {
        api_key,
        api_version: version,
        correlation_id: header.correlation_id,
        client_id: header.client_id.map(|c| c.to_string()),
    };
    Some((ctx, body))
}

/// Frames an answer: size, response header, body.
pub fn encode_response<R: Encodable>(ctx: &RequestContext, body: &R) -> Outcome {
    encode_response_at(ctx, ctx.api_version, body)
}

pub fn encode_response_at<R: Encodable>(ctx: &RequestContext, version: i16, body: &R) -> Outcome {
    let header = ResponseHeader::default().with_correlation_id(ctx.correlation_id);
    let header_version = ctx.api_key.response_header_version(version);
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let encoded = header
        .encode(&mut buf, header_version)
        .and_then(|_| body.encode(&mut buf, version));
    if let Err(e) = encoded {
        eprintln!(
            "sluice: cannot encode {:?} v{version} response: {e}",
            ctx.api_key
        );
        return Outcome::Close;
    }
    let size = (buf.len() - 4) as i32;
    (&mut buf[..4]).put_i32(size);
    Outcome::Respond(buf.freeze())
}

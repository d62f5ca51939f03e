//! How responses given in pieces leave for the socket: the one seam between answers and the
//! kernel's send path.
//!
//! A fetch response is a list of [`Bytes`]: small encoded fields and batch headers, and large
//! record-data pieces shared with the batch cache. Small neighbouring pieces are gathered into
//! one buffer (a copy of a few hundred bytes); large ones are handed to the kernel as they are.
//! Two ways to do that, chosen by `sluice.socket.send.zerocopy`:
//!
//! - **Vectored** (default): `sendmsg(2)` with one iovec per piece, `MSG_DONTWAIT`. The kernel
//!   copies the bytes into socket buffers once, as with any send.
//! - **Zero-copy**: io_uring `SENDMSG_ZC` (Linux 6.1+) on a small ring per core from the
//!   `io-uring` crate (glommio has no such operation). The kernel pins the pages instead of
//!   copying; the pieces are kept alive until its notification says the pages are released.
//!   `IORING_SEND_ZC_REPORT_USAGE` makes the notification say whether the kernel fell back to a
//!   copy, which it always does for loopback; the counts are logged when the broker stops.
//!   Only responses of at least [`ZERO_COPY_RESPONSE_BYTES_MIN`] go this way: for small ones
//!   the pinning and the extra completion cost more than the copy (measured in
//!   docs/BENCHMARKS.md).
//!
//! Either way a send that would block (the socket buffer is full) falls back to glommio's own
//! send of the next piece, which waits for room; then the fast path resumes. Nothing here
//! blocks the reactor: each attempt is non-blocking, and the zero-copy ring is entered only to
//! collect the result of an attempt that has already run inline.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use io_uring::{cqueue, opcode, types, IoUring};

/// Pieces at least this large are sent as they are; smaller neighbours are gathered into one.
pub const DIRECT_SEND_BYTES_MIN: usize = 16 * 1024;

/// Responses smaller than this are sent vectored even when zero-copy is on.
pub const ZERO_COPY_RESPONSE_BYTES_MIN: usize = 256 * 1024;

/// At most this many iovecs per `sendmsg` (Linux's UIO_MAXIOV is 1024).
const IOVECS_MAX: usize = 256;

/// `IORING_SEND_ZC_REPORT_USAGE` and the bit it sets in the notification's result.
const SEND_ZC_REPORT_USAGE: u16 = 8;
const NOTIF_USAGE_ZC_COPIED: i32 = i32::MIN;

/// Writes `parts` in order; `zerocopy` selects SENDMSG_ZC over vectored sendmsg.
pub async fn send_parts(
    writer: &mut TcpStream,
    parts: Vec<Bytes>,
    zerocopy: bool,
) -> io::Result<()> {
    let mut queue = gather(parts);
    // Zero-copy pays only for large sends (pinning pages and the extra completion cost more
    // than copying a few kilobytes): small responses go the vectored way either way.
    let zerocopy =
        zerocopy && queue.iter().map(Bytes::len).sum::<usize>() >= ZERO_COPY_RESPONSE_BYTES_MIN;
    let fd = writer.as_raw_fd();
    while !queue.is_empty() {
        let sent = if zerocopy {
            ZeroCopy::with(|zc| zc.send(fd, &queue))?
        } else {
            send_vectored(fd, &queue)?
        };
        match sent {
            Some(n) if n > 0 => advance(&mut queue, n),
            _ => {
                // The socket buffer is full: let glommio wait for room while sending the next
                // piece (a copying send), then go on with the fast path.
                if let Some(front) = queue.pop_front() {
                    writer.write_all(&front).await?;
                }
            }
        }
    }
    Ok(())
}

/// Small neighbouring pieces merged into one buffer; large pieces kept as they are.
fn gather(parts: Vec<Bytes>) -> VecDeque<Bytes> {
    let mut out = VecDeque::with_capacity(parts.len());
    let mut staged = BytesMut::new();
    for part in parts {
        if part.len() >= DIRECT_SEND_BYTES_MIN {
            if !staged.is_empty() {
                out.push_back(staged.split().freeze());
            }
            out.push_back(part);
        } else if !part.is_empty() {
            staged.extend_from_slice(&part);
        }
    }
    if !staged.is_empty() {
        out.push_back(staged.freeze());
    }
    out
}

/// Drops the first `n` bytes of the queue.
fn advance(queue: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = queue.front_mut() else {
            return;
        };
        if front.len() <= n {
            n -= front.len();
            queue.pop_front();
        } else {
            let _ = front.split_to(n);
            n = 0;
        }
    }
}

fn iovecs(queue: &VecDeque<Bytes>) -> Vec<libc::iovec> {
    queue
        .iter()
        .take(IOVECS_MAX)
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect()
}

/// One non-blocking `sendmsg`; `Ok(None)` when the socket buffer is full.
fn send_vectored(fd: RawFd, queue: &VecDeque<Bytes>) -> io::Result<Option<usize>> {
    let mut iov = iovecs(queue);
    // SAFETY: an all-zero msghdr is valid (no address, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: every iovec points into a Bytes that `queue` keeps alive across the call.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(None),
            _ => return Err(err),
        }
    }
}

/// The per-core io_uring ring for zero-copy sends and the pieces the kernel may still read.
struct ZeroCopy {
    ring: IoUring,
    next_id: u64,
    /// Pieces of each submitted send, kept until its last completion (the notification).
    held: HashMap<u64, Vec<Bytes>>,
    /// Results of sends whose first completion arrived.
    results: HashMap<u64, i32>,
    sends: u64,
    copied: u64,
}

thread_local! {
    static ZERO_COPY: RefCell<Option<Rc<RefCell<ZeroCopy>>>> = const { RefCell::new(None) };
}

/// How often a core with sends awaiting their notification looks for it.
const REAP_INTERVAL: Duration = Duration::from_millis(20);

impl ZeroCopy {
    /// Runs `f` with this core's ring, creating it (and its reaper task) on first use.
    fn with<T>(f: impl FnOnce(&mut ZeroCopy) -> io::Result<T>) -> io::Result<T> {
        let zc = ZERO_COPY.with(|slot| -> io::Result<_> {
            let mut slot = slot.borrow_mut();
            if let Some(zc) = slot.as_ref() {
                return Ok(zc.clone());
            }
            let zc = Rc::new(RefCell::new(ZeroCopy {
                ring: IoUring::new(64)?,
                next_id: 0,
                held: HashMap::new(),
                results: HashMap::new(),
                sends: 0,
                copied: 0,
            }));
            let weak = Rc::downgrade(&zc);
            glommio::spawn_local(async move {
                while let Some(zc) = weak.upgrade() {
                    if !zc.borrow().held.is_empty() {
                        zc.borrow_mut().reap();
                    }
                    drop(zc);
                    glommio::timer::sleep(REAP_INTERVAL).await;
                }
            })
            .detach();
            *slot = Some(zc.clone());
            Ok(zc)
        })?;
        let mut zc = zc.borrow_mut();
        f(&mut zc)
    }

    /// One non-blocking SENDMSG_ZC of the queue's first pieces; `Ok(None)` when the socket
    /// buffer is full.
    fn send(&mut self, fd: RawFd, queue: &VecDeque<Bytes>) -> io::Result<Option<usize>> {
        let mut iov = iovecs(queue);
        // SAFETY: an all-zero msghdr is valid (no address, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        let id = self.next_id;
        self.next_id += 1;
        let entry = opcode::SendMsgZc::new(types::Fd(fd), &msg)
            .ioprio(SEND_ZC_REPORT_USAGE)
            .flags((libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32)
            .build()
            .user_data(id);
        self.held
            .insert(id, queue.iter().take(iov.len()).cloned().collect());
        // SAFETY: `msg` and `iov` outlive the operation's first completion, awaited below
        // before they go out of scope; the pieces they point into are held in `self.held`
        // until the kernel's notification releases them.
        unsafe {
            if self.ring.submission().push(&entry).is_err() {
                self.ring.submit()?;
                self.ring
                    .submission()
                    .push(&entry)
                    .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            }
        }
        // MSG_DONTWAIT: the send runs inline and never waits for socket room, so its first
        // completion is posted before (or very shortly after) this returns.
        let result = loop {
            if let Some(res) = self.results.remove(&id) {
                break res;
            }
            self.ring.submit_and_wait(1)?;
            self.reap();
        };
        self.sends += 1;
        match result {
            n if n >= 0 => Ok(Some(n as usize)),
            n if n == -libc::EAGAIN => Ok(None),
            n => Err(io::Error::from_raw_os_error(-n)),
        }
    }

    /// Takes every completion off the ring: results are recorded, and pieces are released once
    /// their send's last completion (the notification, or a result without one) has arrived.
    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            let id = cqe.user_data();
            let flags = cqe.flags();
            if cqueue::notif(flags) {
                if cqe.result() & NOTIF_USAGE_ZC_COPIED != 0 {
                    self.copied += 1;
                }
            } else {
                self.results.insert(id, cqe.result());
            }
            if !cqueue::more(flags) {
                self.held.remove(&id);
            }
        }
    }
}

/// Zero-copy sends made on this core and how many of them the kernel copied after all;
/// None when the core never sent zero-copy.
pub fn zero_copy_counts() -> Option<(u64, u64)> {
    ZERO_COPY.with(|slot| {
        slot.borrow().as_ref().map(|zc| {
            let mut zc = zc.borrow_mut();
            zc.reap();
            (zc.sends, zc.copied)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_pieces_are_gathered_and_large_ones_kept() {
        let big = Bytes::from(vec![7u8; DIRECT_SEND_BYTES_MIN]);
        let queue = gather(vec![
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"cd"),
            big.clone(),
            Bytes::from_static(b"e"),
        ]);
        assert_eq!(queue.len(), 3);
        assert_eq!(&queue[0][..], b"abcd");
        assert_eq!(
            queue[1].as_ptr(),
            big.as_ptr(),
            "the large piece is not copied"
        );
        assert_eq!(&queue[2][..], b"e");
    }

    #[test]
    fn advance_drops_whole_and_partial_pieces() {
        let mut queue: VecDeque<Bytes> = [&b"abc"[..], b"defg", b"h"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        advance(&mut queue, 5);
        assert_eq!(queue.len(), 2);
        assert_eq!(&queue[0][..], b"fg");
        advance(&mut queue, 3);
        assert!(queue.is_empty());
    }
}

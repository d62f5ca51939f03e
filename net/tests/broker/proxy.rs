//! A TCP proxy between clients and the broker that loses responses on purpose: it passes every
//! request on, but after every `drop_every`-th Produce request it closes the connection instead
//! of passing the broker's answer back. The client sees a request the broker served go
//! unanswered and retries it — what a network fault does to a real producer.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

const PRODUCE: i16 = 0;

pub struct Proxy {
    pub port: u16,
    produced: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on `port`, forwarding to the broker on `upstream`.
    pub fn start(port: u16, upstream: u16, drop_every: usize) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("proxy port");
        let produced = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, d, s) = (produced.clone(), dropped.clone(), stop.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(broker) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                serve(client, broker, drop_every, p.clone(), d.clone());
            }
        });
        Proxy {
            port,
            produced,
            dropped,
            stop,
        }
    }

    /// Produce responses the proxy has lost so far.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }

    pub fn produced(&self) -> usize {
        self.produced.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One size-prefixed Kafka frame (size included); None at end of stream.
fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let len = usize::try_from(i32::from_be_bytes(size)).ok()?;
    let mut frame = vec![0u8; 4 + len];
    frame[..4].copy_from_slice(&size);
    stream.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}

fn serve(
    client: TcpStream,
    broker: TcpStream,
    drop_every: usize,
    produced: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
) {
    // Correlation id → API key of the requests in flight on this connection.
    let inflight: Arc<Mutex<HashMap<i32, i16>>> = Arc::default();
    let (mut c_in, mut b_out) = (
        client.try_clone().expect("clone"),
        broker.try_clone().expect("clone"),
    );
    let requests = inflight.clone();
    thread::spawn(move || {
        while let Some(frame) = read_frame(&mut c_in) {
            if frame.len() >= 12 {
                let api_key = i16::from_be_bytes([frame[4], frame[5]]);
                let correlation = i32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
                requests.lock().expect("lock").insert(correlation, api_key);
            }
            if b_out.write_all(&frame).is_err() {
                break;
            }
        }
        let _ = b_out.shutdown(Shutdown::Both);
    });
    let (mut b_in, mut c_out) = (broker, client);
    thread::spawn(move || {
        while let Some(frame) = read_frame(&mut b_in) {
            if frame.len() >= 8 {
                let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                let api_key = inflight.lock().expect("lock").remove(&correlation);
                if api_key == Some(PRODUCE)
                    && produced.fetch_add(1, Ordering::SeqCst) % drop_every == drop_every - 1
                {
                    // The broker served it; the client never hears.
                    dropped.fetch_add(1, Ordering::SeqCst);
                    let _ = c_out.shutdown(Shutdown::Both);
                    let _ = b_in.shutdown(Shutdown::Both);
                    return;
                }
            }
            if c_out.write_all(&frame).is_err() {
                break;
            }
        }
        let _ = c_out.shutdown(Shutdown::Both);
    });
}

//! Requests from this broker to another one, over the other broker's client port as any Kafka
//! client would send them: a follower's Fetch and OffsetForLeaderEpoch to its leader, a
//! transaction coordinator's WriteTxnMarkers to partition leaders, and a partition leader's
//! AddPartitionsToTxn to a transaction's coordinator.
//!
//! One request at a time per connection (each answer is read before the next request goes
//! out). [`call`] keeps idle connections per core and broker for the next request; a
//! connection that fails is dropped, and the caller decides whether to retry.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::shard::Shard;

/// Largest answer read from another broker.
const RESPONSE_BYTES_MAX: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A broker that does not answer within this is taken for gone (its connection is dropped).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle connections of one core, by broker id.
pub type PeerPool = HashMap<i32, Vec<PeerConnection>>;

/// A connection to another broker's client port.
pub struct PeerConnection {
    stream: TcpStream,
    correlation_id: i32,
}

impl PeerConnection {
    pub async fn connect(shard: &Shard, broker: i32) -> Option<PeerConnection> {
        let endpoint = shard.cluster.borrow().broker(broker).cloned()?;
        let host = if endpoint.host == "localhost" {
            "127.0.0.1".to_string()
        } else {
            endpoint.host
        };
        let address: std::net::SocketAddr = format!("{host}:{}", endpoint.port).parse().ok()?;
        let stream = TcpStream::connect_timeout(address, CONNECT_TIMEOUT)
            .await
            .ok()?;
        let _ = stream.set_nodelay(true);
        Some(PeerConnection {
            stream,
            correlation_id: 0,
        })
    }

    /// Sends one request (as client `sluice-broker-{node}`) and reads its answer; None when
    /// the connection failed or the answer does not decode (the connection is then unusable).
    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        node: i32,
        key: ApiKey,
        version: i16,
        request: &Req,
    ) -> Option<Resp> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_string(format!("sluice-broker-{node}"))));
        let mut buf = BytesMut::with_capacity(256);
        buf.put_i32(0);
        header
            .encode(&mut buf, key.request_header_version(version))
            .ok()?;
        request.encode(&mut buf, version).ok()?;
        let size = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&buf).await.ok()?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).await.ok()?;
        let size = usize::try_from(i32::from_be_bytes(size)).ok()?;
        if size > RESPONSE_BYTES_MAX {
            return None;
        }
        let mut body = vec![0u8; size];
        self.stream.read_exact(&mut body).await.ok()?;
        let mut body = Bytes::from(body);
        let header =
            ResponseHeader::decode(&mut body, key.response_header_version(version)).ok()?;
        if header.correlation_id != self.correlation_id {
            return None;
        }
        Resp::decode(&mut body, version).ok()
    }
}

/// One request to `broker` on a pooled connection of this core (a new one if none is idle);
/// None when the broker cannot be reached or did not answer in time.
pub async fn call<Req: Encodable, Resp: Decodable>(
    shard: &Shard,
    broker: i32,
    key: ApiKey,
    version: i16,
    request: &Req,
) -> Option<Resp> {
    let pooled = shard.peers.borrow_mut().get_mut(&broker).and_then(Vec::pop);
    let mut connection = match pooled {
        Some(c) => c,
        None => PeerConnection::connect(shard, broker).await?,
    };
    let answer = crate::shard::with_timeout(
        connection.call(shard.broker.node_id, key, version, request),
        ANSWER_TIMEOUT,
    )
    .await
    .flatten()?;
    shard
        .peers
        .borrow_mut()
        .entry(broker)
        .or_default()
        .push(connection);
    Some(answer)
}

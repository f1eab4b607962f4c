//! A minimal Kafka client for seedlog's own tools (`seedlog bench`, the simulator's
//! workloads): one request at a time per connection, every call bounded by a timeout (a
//! clogged link holds data forever otherwise). Under the simulator its TCP is simulated.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use seedlog_core::wire::{decode_response, encode_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a call did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No connection could be made.
    Connect(String),
    /// The connection broke or the answer did not arrive in time.
    Lost(String),
}

/// One connection to a broker, opened on demand and dropped on any error.
pub struct Client {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    next_correlation: i32,
    timeout: Duration,
}

impl Client {
    /// A client for the broker at `addr`; nothing is connected yet.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Client {
        Client {
            addr,
            stream: None,
            next_correlation: 1,
            timeout,
        }
    }

    /// Sends one request and waits for its response.
    pub async fn call(
        &mut self,
        api: ApiKey,
        version: i16,
        request: RequestKind,
    ) -> Result<ResponseKind, CallError> {
        let result =
            tokio::time::timeout(self.timeout, self.call_inner(api, version, request)).await;
        match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(CallError::Lost("timed out".into()))
            }
        }
    }

    fn frame(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &RequestKind,
    ) -> Result<Bytes, CallError> {
        let correlation = self.next_correlation;
        self.next_correlation += 1;
        encode_request(api, version, correlation, request).map_err(CallError::Lost)
    }

    async fn connected(&mut self) -> Result<&mut TcpStream, CallError> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|e| CallError::Connect(e.to_string()))?;
            self.stream = Some(stream);
        }
        Ok(self.stream.as_mut().expect("just connected"))
    }

    async fn call_inner(
        &mut self,
        api: ApiKey,
        version: i16,
        request: RequestKind,
    ) -> Result<ResponseKind, CallError> {
        let frame = self.frame(api, version, &request)?;
        let correlation = self.next_correlation - 1;
        let stream = self.connected().await?;
        let lost = |e: std::io::Error| CallError::Lost(e.to_string());
        stream.write_all(&frame).await.map_err(lost)?;
        // madsim's stream sends on flush.
        stream.flush().await.map_err(lost)?;
        let size = stream.read_i32().await.map_err(lost)?;
        if !(0..=64 << 20).contains(&size) {
            return Err(CallError::Lost(format!("response size {size}")));
        }
        let mut buf = BytesMut::zeroed(4 + size as usize);
        buf[..4].copy_from_slice(&size.to_be_bytes());
        stream.read_exact(&mut buf[4..]).await.map_err(lost)?;
        let (got, response) =
            decode_response(api, version, buf.freeze()).map_err(CallError::Lost)?;
        if got != correlation {
            return Err(CallError::Lost(format!(
                "correlation {got}, expected {correlation}"
            )));
        }
        Ok(response)
    }
}

//! The client side of the control socket: connect, write request lines, read bounded response
//! lines (at most [`MAX_RESPONSE_LINE`](super::MAX_RESPONSE_LINE) bytes), with deadlines.
//!
//! It prints nothing: rendering for people is the binary's `cli` module.

use super::{
    encode_line, read_line_bounded, ControlError, Line, Request, Response, CLIENT_TIMEOUT,
    DEFAULT_WAIT, MAX_RESPONSE_LINE, MAX_WAIT,
};
use crate::node::history::HistoryEntry;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Connects to the control socket at `path`.
pub async fn connect(path: &Path) -> Result<UnixStream, ControlError> {
    use std::io::ErrorKind;
    match tokio::time::timeout(CLIENT_TIMEOUT, UnixStream::connect(path)).await {
        Err(_) => Err(ControlError::Timeout(CLIENT_TIMEOUT)),
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            Err(ControlError::NotRunning(path.to_path_buf()))
        }
        Ok(Err(source)) => Err(ControlError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// An open control connection (several requests, one after another).
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    wr: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    /// Connects to the control socket at `path`.
    pub async fn connect(path: &Path) -> Result<Client, ControlError> {
        let (rd, wr) = connect(path).await?.into_split();
        Ok(Client {
            path: path.to_path_buf(),
            rd: BufReader::new(rd),
            wr,
        })
    }

    fn io(&self, source: std::io::Error) -> ControlError {
        ControlError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Sends one request line.
    pub async fn send(&mut self, req: &Request) -> Result<(), ControlError> {
        let line = encode_line(req);
        let r = async {
            self.wr.write_all(&line).await?;
            self.wr.flush().await
        }
        .await;
        r.map_err(|e| self.io(e))
    }

    /// Reads the next response line (a failure response is returned as is, not as an error).
    pub async fn next(&mut self) -> Result<Response, ControlError> {
        match read_line_bounded(&mut self.rd, MAX_RESPONSE_LINE).await {
            Err(e) => Err(self.io(e)),
            Ok(None) => Err(ControlError::Closed),
            Ok(Some(Line::TooLong)) => Err(ControlError::ResponseTooLarge {
                max: MAX_RESPONSE_LINE,
            }),
            Ok(Some(Line::Complete(b))) => {
                serde_json::from_slice(&b).map_err(|e| ControlError::BadResponse(e.to_string()))
            }
        }
    }

    /// One request, one response, with a deadline.
    pub async fn call(
        &mut self,
        req: &Request,
        deadline: Duration,
    ) -> Result<Response, ControlError> {
        tokio::time::timeout(deadline, async {
            if let Err(e) = self.send(req).await {
                // The node may have answered and closed before reading our request (it refuses
                // connections beyond MAX_CLIENTS that way): its answer says why, a bare
                // "Broken pipe" would not.
                return match self.next().await {
                    Ok(resp) => Ok(resp),
                    Err(_) => Err(e),
                };
            }
            self.next().await
        })
        .await
        .map_err(|_| ControlError::Timeout(deadline))?
    }
}

/// Sends one request to the node at `path` and returns its response (a failure response is
/// returned as is; see [`Response::into_result`]).
pub async fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let deadline = match req {
        Request::WaitDelivered { timeout_ms, .. } => timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_WAIT)
            .min(MAX_WAIT)
            .saturating_add(CLIENT_TIMEOUT),
        // Hashing a large file before it is offered takes a while.
        Request::SendFile { .. } => Duration::from_secs(3600),
        _ => CLIENT_TIMEOUT,
    };
    let mut c = Client::connect(path).await?;
    c.call(req, deadline).await
}

/// A `follow` stream.
#[derive(Debug)]
pub struct Follow {
    client: Client,
}

impl Follow {
    /// The next streamed entry (`Ok(None)`: the node stopped). Lag notices are logged and skipped.
    pub async fn next_entry(&mut self) -> Result<Option<HistoryEntry>, ControlError> {
        loop {
            let r = match self.client.next().await {
                Err(ControlError::Closed) => return Ok(None),
                other => other?.into_result()?,
            };
            if let Some(e) = r.entry {
                return Ok(Some(e));
            }
            if let Some(n) = r.lagged {
                tracing::warn!(missed = n, "follow stream lagged");
            }
        }
    }
}

/// Opens a `follow` stream: entries after `after_seq` (if given), then every new entry and
/// status change.
pub async fn follow_stream(path: &Path, after_seq: Option<u64>) -> Result<Follow, ControlError> {
    let mut client = Client::connect(path).await?;
    let first = client
        .call(
            &Request::Follow {
                after_seq,
                events: false,
            },
            CLIENT_TIMEOUT,
        )
        .await?
        .into_result()?;
    if first.following != Some(true) {
        return Err(ControlError::BadResponse(
            "follow was not acknowledged".into(),
        ));
    }
    Ok(Follow { client })
}

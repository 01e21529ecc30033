//! Waiting on the one download of a file: the client that started it, handed chunks at its
//! pace (within limits), and the requests that joined it, told how it ended.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::{Body1, Download, Failure, CLIENT_SEND_TIMEOUT, CLIENT_SEND_TIMEOUT_SHARED};

/// Hands a chunk to the client that started a download, waiting at most
/// [`CLIENT_SEND_TIMEOUT`] for it to take one, or [`CLIENT_SEND_TIMEOUT_SHARED`] once other
/// requests wait for the download (looked at again while it waits: a request that joins while
/// the client dawdles shortens the wait). False: the client is to be cut loose.
pub(super) async fn send_paced(b: &Body1, chunk: Bytes, state: &watch::Sender<Download>) -> bool {
    let started = tokio::time::Instant::now();
    loop {
        // Requests waiting for this download hold a state receiver each, beside the map's.
        let limit = if state.receiver_count() > 1 {
            CLIENT_SEND_TIMEOUT_SHARED
        } else {
            CLIENT_SEND_TIMEOUT
        };
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return false;
        }
        match tokio::time::timeout(left.min(Duration::from_millis(250)), b.reserve()).await {
            Ok(Ok(permit)) => {
                permit.send(Ok(chunk));
                return true;
            }
            Ok(Err(_)) => return false,
            Err(_) => {}
        }
    }
}

/// Waits for a download to settle: `Ok` once its bytes were verified (and cached if they could
/// be), `Err` with its failure otherwise.
pub(super) async fn wait_download(mut rx: watch::Receiver<Download>) -> Result<(), Failure> {
    loop {
        match rx.borrow().clone() {
            Download::Done => return Ok(()),
            Download::Failed(f) => return Err(f),
            Download::Running => {}
        }
        if rx.changed().await.is_err() {
            return match rx.borrow().clone() {
                Download::Done => Ok(()),
                Download::Failed(f) => Err(f),
                Download::Running => Err(Failure::Unavailable("download stopped".into())),
            };
        }
    }
}

//! The writer half of a connection: writes batches of encoded frames in order, coalescing
//! whatever is queued into one write, and returns delivery credit once bytes are written.

use super::stream::Writer;
use crate::delivery::ChannelFlow;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Encoded frames plus the delivery credit to return once they are written.
pub struct Batch {
    /// The bytes.
    pub data: Bytes,
    /// Deliveries in `data`, per channel.
    pub written: Vec<(Arc<ChannelFlow>, u32)>,
}

/// Most bytes coalesced into one write.
const MAX_COALESCE: usize = 256 * 1024;

/// Runs until the sender is dropped (then flushes and shuts the socket down) or a write
/// fails. Returns false on a write error.
pub async fn run(mut socket: Writer, mut rx: mpsc::UnboundedReceiver<Batch>) -> bool {
    let mut buf = BytesMut::new();
    let mut credits: Vec<(Arc<ChannelFlow>, u32)> = Vec::new();
    let mut ok = true;
    while let Some(first) = rx.recv().await {
        let mut pending = vec![first];
        let mut size = pending[0].data.len();
        while size < MAX_COALESCE {
            match rx.try_recv() {
                Ok(b) => {
                    size += b.data.len();
                    pending.push(b);
                }
                Err(_) => break,
            }
        }
        let result = if pending.len() == 1 {
            socket.write_all(&pending[0].data).await
        } else {
            buf.clear();
            for b in &pending {
                buf.extend_from_slice(&b.data);
            }
            socket.write_all(&buf).await
        };
        for b in pending {
            credits.extend(b.written);
        }
        for (flow, n) in credits.drain(..) {
            flow.written(n);
        }
        if result.is_err() {
            ok = false;
            break;
        }
    }
    // Return the credit of whatever was never written.
    rx.close();
    while let Ok(b) = rx.try_recv() {
        for (flow, n) in b.written {
            flow.written(n);
        }
    }
    let _ = socket.shutdown().await;
    ok
}

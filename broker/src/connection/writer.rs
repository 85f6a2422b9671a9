//! The writer half of a connection: writes batches of encoded frames in order, gathering
//! whatever is queued into one vectored write (large bodies go out from the buffers they
//! arrived in, never copied), and returns delivery credit once bytes are written.

use super::stream::Writer;
use crate::delivery::ChannelFlow;
use bytes::{Buf, Bytes};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Encoded frames plus the delivery credit to return once they are written.
pub struct Batch {
    /// Bytes written before `data`, in order (earlier frames and large bodies).
    pub parts: Vec<Bytes>,
    /// The bytes.
    pub data: Bytes,
    /// Deliveries in `parts` and `data`, per channel.
    pub written: Vec<(Arc<ChannelFlow>, u32)>,
}

/// Most bytes gathered into one round of writes.
const MAX_COALESCE: usize = 256 * 1024;
/// Most buffers handed to one `writev` (well under every system's IOV_MAX).
const MAX_SLICES: usize = 64;

/// Runs until the sender is dropped (then flushes and shuts the socket down) or a write
/// fails. Returns false on a write error.
pub async fn run(mut socket: Writer, mut rx: mpsc::UnboundedReceiver<Batch>) -> bool {
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    let mut credits: Vec<(Arc<ChannelFlow>, u32)> = Vec::new();
    let mut ok = true;
    while let Some(first) = rx.recv().await {
        let mut size = gather(first, &mut chunks, &mut credits);
        while size < MAX_COALESCE {
            match rx.try_recv() {
                Ok(b) => size += gather(b, &mut chunks, &mut credits),
                Err(_) => break,
            }
        }
        let result = write_all(&mut socket, &mut chunks).await;
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

/// Queues a batch's bytes and credit; returns its size.
fn gather(
    b: Batch,
    chunks: &mut VecDeque<Bytes>,
    credits: &mut Vec<(Arc<ChannelFlow>, u32)>,
) -> usize {
    let mut size = 0;
    for part in b.parts.into_iter().chain(std::iter::once(b.data)) {
        if !part.is_empty() {
            size += part.len();
            chunks.push_back(part);
        }
    }
    credits.extend(b.written);
    size
}

/// Writes every chunk, in order, with as few system calls as the socket allows.
async fn write_all(socket: &mut Writer, chunks: &mut VecDeque<Bytes>) -> io::Result<()> {
    while !chunks.is_empty() {
        let n = if chunks.len() == 1 {
            socket.write(&chunks[0]).await?
        } else {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut k = 0;
            for (slot, chunk) in slices.iter_mut().zip(chunks.iter()) {
                *slot = IoSlice::new(chunk);
                k += 1;
            }
            socket.write_vectored(&slices[..k]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 {
            let Some(front) = chunks.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                chunks.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    Ok(())
}

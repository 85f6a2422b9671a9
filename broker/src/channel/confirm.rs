//! Publisher confirms for one channel: a publish is confirmed when every queue it was routed
//! to has accepted it. Confirms go out in publish order, folded into `multiple` acks where
//! a run of consecutive sequence numbers is settled; a nack is always sent on its own.

use std::collections::{BTreeMap, HashMap};

/// A confirm to send: (delivery tag, multiple, ack).
pub type Confirm = (u64, bool, bool);

/// Tracks the outstanding publishes of a channel in confirm mode.
#[derive(Debug, Default)]
pub struct ConfirmTracker {
    last_seq: u64,
    /// Publishes waiting for queues: remaining answers, and whether any queue refused.
    pending: HashMap<u64, (u32, bool)>,
    /// Settled publishes not yet confirmed to the client.
    settled: BTreeMap<u64, bool>,
    last_sent: u64,
}

impl ConfirmTracker {
    /// Assigns the next sequence number.
    pub fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// The publish `seq` went to `queues` queues (0: settle now with `ok`).
    pub fn expect(&mut self, seq: u64, queues: u32, ok: bool) {
        if queues == 0 {
            self.settled.insert(seq, ok);
        } else {
            self.pending.insert(seq, (queues, false));
        }
    }

    /// One queue answered for `seq`.
    pub fn answer(&mut self, seq: u64, ok: bool) {
        let Some((left, refused)) = self.pending.get_mut(&seq) else {
            return;
        };
        *left -= 1;
        *refused |= !ok;
        if *left == 0 {
            let refused = *refused;
            self.pending.remove(&seq);
            self.settled.insert(seq, !refused);
        }
    }

    /// Appends the confirms that can be sent now, in order.
    pub fn drain(&mut self, out: &mut Vec<Confirm>) {
        let mut run_end = None;
        let mut run_len = 0u64;
        loop {
            let next = self.last_sent + 1;
            let Some(ok) = self.settled.remove(&next) else {
                break;
            };
            self.last_sent = next;
            if ok {
                run_end = Some(next);
                run_len += 1;
            } else {
                if let Some(end) = run_end.take() {
                    out.push((end, run_len > 1, true));
                }
                run_len = 0;
                out.push((next, false, false));
            }
        }
        if let Some(end) = run_end {
            out.push((end, run_len > 1, true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_acks_fold_into_one_multiple_ack() {
        let mut t = ConfirmTracker::default();
        for _ in 0..3 {
            let s = t.next_seq();
            t.expect(s, 1, true);
        }
        t.answer(2, true);
        t.answer(3, true);
        let mut out = vec![];
        t.drain(&mut out);
        assert!(out.is_empty(), "1 is still pending");
        t.answer(1, true);
        t.drain(&mut out);
        assert_eq!(out, vec![(3, true, true)]);
    }

    #[test]
    fn a_publish_waits_for_every_queue_and_a_refusal_nacks_it() {
        let mut t = ConfirmTracker::default();
        let a = t.next_seq();
        t.expect(a, 2, true);
        let b = t.next_seq();
        t.expect(b, 0, true);
        let c = t.next_seq();
        t.expect(c, 1, true);
        t.answer(a, true);
        let mut out = vec![];
        t.drain(&mut out);
        assert!(out.is_empty());
        t.answer(a, false);
        t.answer(c, true);
        t.drain(&mut out);
        assert_eq!(out, vec![(1, false, false), (3, true, true)]);
    }
}

//! Publisher confirms for one channel: a publish is confirmed when every queue it was routed
//! to has accepted it. Confirms go out in publish order, folded into `multiple` acks where
//! a run of consecutive sequence numbers is settled; a nack is always sent on its own.

use std::collections::VecDeque;

/// A confirm to send: (delivery tag, multiple, ack).
pub type Confirm = (u64, bool, bool);

/// Where a publish stands.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Its sequence number is handed out but its queues are not known yet.
    Unknown,
    /// Waiting for `left` queues; `refused` once any queue refused it.
    Pending { left: u32, refused: bool },
    /// Settled (acked or nacked), not yet confirmed to the client.
    Settled(bool),
}

/// Tracks the outstanding publishes of a channel in confirm mode.
#[derive(Debug, Default)]
pub struct ConfirmTracker {
    last_seq: u64,
    /// The publishes after `last_sent`, in order (sequence numbers are handed out in order
    /// and confirmed in order, so a deque indexed from the oldest one holds them).
    slots: VecDeque<Slot>,
    last_sent: u64,
}

impl ConfirmTracker {
    /// Assigns the next sequence number.
    pub fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// The slot of `seq`, None if it was confirmed already.
    fn slot(&mut self, seq: u64) -> Option<&mut Slot> {
        let i = usize::try_from(seq.checked_sub(self.last_sent + 1)?).ok()?;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, Slot::Unknown);
        }
        self.slots.get_mut(i)
    }

    /// The publish `seq` went to `queues` queues (0: settle now with `ok`).
    pub fn expect(&mut self, seq: u64, queues: u32, ok: bool) {
        if let Some(slot) = self.slot(seq) {
            *slot = if queues == 0 {
                Slot::Settled(ok)
            } else {
                Slot::Pending {
                    left: queues,
                    refused: false,
                }
            };
        }
    }

    /// One queue answered for `seq`.
    pub fn answer(&mut self, seq: u64, ok: bool) {
        let Some(i) = seq
            .checked_sub(self.last_sent + 1)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return;
        };
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        if let Slot::Pending { left, refused } = slot {
            *left -= 1;
            *refused |= !ok;
            if *left == 0 {
                *slot = Slot::Settled(!*refused);
            }
        }
    }

    /// Appends the confirms that can be sent now, in order.
    pub fn drain(&mut self, out: &mut Vec<Confirm>) {
        let mut run_end = None;
        let mut run_len = 0u64;
        while let Some(Slot::Settled(ok)) = self.slots.front().copied() {
            self.slots.pop_front();
            self.last_sent += 1;
            let next = self.last_sent;
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

    #[test]
    fn answers_for_confirmed_or_unknown_sequence_numbers_change_nothing() {
        let mut t = ConfirmTracker::default();
        let a = t.next_seq();
        t.expect(a, 1, true);
        t.answer(a, true);
        let mut out = vec![];
        t.drain(&mut out);
        assert_eq!(out, vec![(1, false, true)]);
        // Late or stray answers: already confirmed, or never handed out.
        t.answer(a, false);
        t.answer(99, false);
        let b = t.next_seq();
        t.expect(b, 2, true);
        t.answer(b, true);
        out.clear();
        t.drain(&mut out);
        assert!(out.is_empty(), "2 waits for its second queue");
        t.answer(b, true);
        t.drain(&mut out);
        assert_eq!(out, vec![(2, false, true)]);
    }
}

//! Publisher-confirm accounting: turns the broker's `basic.ack`/`basic.nack` frames (single
//! or `multiple`, possibly out of order for single ones) into a count of newly settled
//! publishes, so the publisher can refill its window of unconfirmed messages exactly.

use std::collections::BTreeSet;

/// Which publish sequence numbers are settled.
///
/// Everything up to `low` is settled; the few single acks above `low` that arrived early are
/// kept in a set until the gap below them closes, so the common case (in-order multiple
/// acks) touches no set at all.
#[derive(Debug, Default)]
pub struct ConfirmTracker {
    low: u64,
    above: BTreeSet<u64>,
}

impl ConfirmTracker {
    /// A tracker with nothing published.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an ack or nack of `tag` (all tags up to it when `multiple`); returns how many
    /// publishes this settled that were not settled before.
    pub fn settle(&mut self, tag: u64, multiple: bool) -> u64 {
        if tag <= self.low {
            return 0;
        }
        if multiple {
            let early = self.above.range(..=tag).count() as u64;
            let newly = tag - self.low - early;
            self.above = self.above.split_off(&(tag + 1));
            self.low = tag;
            self.close_gap();
            newly
        } else {
            if !self.above.insert(tag) {
                return 0;
            }
            self.close_gap();
            1
        }
    }

    /// Everything up to this tag is settled.
    pub fn settled_through(&self) -> u64 {
        self.low
    }

    fn close_gap(&mut self) {
        while self.above.remove(&(self.low + 1)) {
            self.low += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiple_acks_in_order() {
        let mut t = ConfirmTracker::new();
        assert_eq!(t.settle(100, true), 100);
        assert_eq!(t.settle(250, true), 150);
        assert_eq!(t.settled_through(), 250);
        // A repeat settles nothing.
        assert_eq!(t.settle(200, true), 0);
        assert_eq!(t.settle(250, false), 0);
    }

    #[test]
    fn single_acks_out_of_order_then_multiple() {
        let mut t = ConfirmTracker::new();
        assert_eq!(t.settle(3, false), 1);
        assert_eq!(t.settle(5, false), 1);
        assert_eq!(t.settled_through(), 0);
        assert_eq!(t.settle(1, false), 1);
        assert_eq!(t.settled_through(), 1);
        assert_eq!(t.settle(2, false), 1);
        // 1, 2, 3 now contiguous.
        assert_eq!(t.settled_through(), 3);
        // 4 and 6 are new, 5 was already counted.
        assert_eq!(t.settle(6, true), 2);
        assert_eq!(t.settled_through(), 6);
        assert_eq!(t.settle(5, false), 0);
    }

    #[test]
    fn multiple_ack_below_early_single_acks_keeps_them() {
        let mut t = ConfirmTracker::new();
        assert_eq!(t.settle(10, false), 1);
        assert_eq!(t.settle(4, true), 4);
        assert_eq!(t.settle(9, true), 5);
        // 10 was already counted and now closes the gap.
        assert_eq!(t.settled_through(), 10);
        assert_eq!(t.settle(10, true), 0);
    }
}

//! What consumer-group members saw, and the checks on it: a partition has at most one owner
//! per generation; an offset fetched after an assignment is never behind a commit that was
//! acknowledged before the fetch was sent, and never ahead of every commit sent before its
//! answer came (committed offsets neither move back nor jump ahead); the group settles.

use std::collections::BTreeMap;

use crate::history::Partition;

/// The group facts of one run.
#[derive(Default)]
pub struct GroupFacts {
    /// Generation -> partition -> the member it was handed to.
    owners: BTreeMap<i32, BTreeMap<Partition, String>>,
    /// Every delivered assignment: (when, generation, member, partitions).
    assignments: Vec<(u64, i32, String, Vec<Partition>)>,
    /// Per partition, (when sent, offset) of every commit attempted.
    sent: BTreeMap<Partition, Vec<(u64, i64)>>,
    /// Per partition, (when acknowledged, offset) of every commit acknowledged.
    acked: BTreeMap<Partition, Vec<(u64, i64)>>,
}

impl GroupFacts {
    /// `member` was handed `partitions` in `generation`; a conflict with another member's
    /// assignment of the same generation, if any.
    pub fn assigned(
        &mut self,
        at_ms: u64,
        generation: i32,
        member: &str,
        partitions: &[Partition],
    ) -> Option<String> {
        self.assignments
            .push((at_ms, generation, member.to_string(), partitions.to_vec()));
        let owners = self.owners.entry(generation).or_default();
        let mut conflict = None;
        for p in partitions {
            match owners.get(p) {
                Some(other) if other != member => {
                    conflict.get_or_insert(format!(
                        "generation {generation}: {}-{} handed to {other} and to {member}",
                        p.0, p.1
                    ));
                }
                Some(_) => {}
                None => {
                    owners.insert(p.clone(), member.to_string());
                }
            }
        }
        conflict
    }

    /// A commit of `offset` was sent.
    pub fn commit_sent(&mut self, at_ms: u64, partition: &Partition, offset: i64) {
        self.sent
            .entry(partition.clone())
            .or_default()
            .push((at_ms, offset));
    }

    /// A commit of `offset` was acknowledged.
    pub fn commit_acked(&mut self, at_ms: u64, partition: &Partition, offset: i64) {
        self.acked
            .entry(partition.clone())
            .or_default()
            .push((at_ms, offset));
    }

    /// An OffsetFetch sent at `sent_ms` and answered at `at_ms` gave `offset` (-1: none);
    /// what is wrong with it, if anything.
    pub fn fetched(
        &self,
        sent_ms: u64,
        at_ms: u64,
        partition: &Partition,
        offset: i64,
    ) -> Option<String> {
        let acked_before = self
            .acked
            .get(partition)
            .into_iter()
            .flatten()
            .filter(|(t, _)| *t < sent_ms)
            .map(|(_, o)| *o)
            .max();
        if let Some(acked) = acked_before.filter(|a| offset < *a) {
            return Some(format!(
                "{}-{}: committed offset read as {offset} after {acked} was acknowledged",
                partition.0, partition.1
            ));
        }
        let ever_sent = self
            .sent
            .get(partition)
            .into_iter()
            .flatten()
            .any(|(t, o)| *t <= at_ms && *o == offset);
        if offset >= 0 && !ever_sent {
            return Some(format!(
                "{}-{}: committed offset read as {offset}, which no member committed",
                partition.0, partition.1
            ));
        }
        None
    }

    /// The latest generation handed out, if it gave every partition of `all` to exactly
    /// one of `members` distinct members.
    pub fn settled(&self, members: usize, all: &[Partition]) -> Option<i32> {
        let latest = self.assignments.iter().map(|a| a.1).max()?;
        let mut given: BTreeMap<&str, &[Partition]> = BTreeMap::new();
        for (_, generation, member, partitions) in &self.assignments {
            if *generation == latest {
                given.insert(member, partitions);
            }
        }
        let mut owned: Vec<&Partition> = given.values().flat_map(|p| p.iter()).collect();
        owned.sort();
        let count = owned.len();
        owned.dedup();
        (given.len() == members && count == all.len() && owned.len() == all.len()).then_some(latest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: i32) -> Partition {
        ("t".to_string(), i)
    }

    #[test]
    fn two_owners_in_one_generation_are_caught_and_one_per_generation_is_fine() {
        let mut g = GroupFacts::default();
        assert_eq!(g.assigned(0, 1, "a", &[p(0), p(1)]), None);
        assert_eq!(g.assigned(0, 1, "b", &[p(2)]), None);
        assert_eq!(
            g.assigned(5, 2, "b", &[p(0)]),
            None,
            "a new generation may move it"
        );
        assert!(g.assigned(5, 2, "a", &[p(0)]).is_some());
        assert_eq!(
            g.settled(2, &[p(0), p(1), p(2)]),
            None,
            "generation 2 lacks p1, p2"
        );
        g.assigned(6, 2, "a", &[p(0), p(1), p(2)]);
        assert_eq!(g.settled(2, &[p(0), p(1), p(2)]), None, "p0 twice");
        g.assigned(7, 3, "a", &[p(1), p(2)]);
        g.assigned(7, 3, "b", &[p(0)]);
        assert_eq!(g.settled(2, &[p(0), p(1), p(2)]), Some(3));
        assert_eq!(g.settled(3, &[p(0), p(1), p(2)]), None, "a member short");
    }

    #[test]
    fn an_offset_behind_an_acknowledged_commit_or_never_committed_is_caught() {
        let mut g = GroupFacts::default();
        g.commit_sent(10, &p(0), 5);
        g.commit_acked(12, &p(0), 5);
        g.commit_sent(20, &p(0), 9);
        assert_eq!(
            g.fetched(11, 13, &p(0), -1),
            None,
            "sent before the ack: may be older"
        );
        assert!(g.fetched(13, 14, &p(0), -1).is_some(), "moved back");
        assert_eq!(
            g.fetched(13, 21, &p(0), 9),
            None,
            "a commit in flight may show"
        );
        assert!(g.fetched(13, 14, &p(0), 7).is_some(), "jumped ahead");
    }
}

//! Canary bugs: known bugs that the simulator can plant to prove its checkers catch them.
//!
//! They exist only in simulation builds (`--cfg madsim`); in every other build
//! [`is_planted`] is a constant `false` and the planted branches compile away.

/// A bug that can be planted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Canary {
    /// Answer acks=all produces before the fsync that makes them durable.
    AckBeforeFsync,
    /// Accept batches with a bad CRC when recovering a segment at startup.
    SkipRecoveryCrc,
    /// Serve fetches up to the log end instead of the high watermark.
    ReadAboveHighWatermark,
    /// Treat a failed fsync as a successful one and carry on.
    IgnoreFsyncError,
    /// Acknowledge a CreateTopics without recording the topic durably.
    VolatileTopics,
    /// Grant a vote to a second candidate in a term already voted in.
    VoteTwice,
    /// Answer acks=all produces of a replicated partition on the leader's local append,
    /// before the batch is committed on a majority.
    AckAllOnLocalAppend,
    /// A follower replacing a conflicting suffix forgets it in its entry table but leaves
    /// the batches in its log.
    KeepConflictingSuffix,
    /// The group coordinator acknowledges an offset commit before its write is committed.
    AckCommitBeforeDurable,
    /// The group coordinator accepts offset commits from any member and generation.
    AcceptStaleCommit,
    /// A completed join phase keeps the old generation number.
    ReuseGeneration,
    /// Group members that stop heartbeating, or miss a join phase, are never removed.
    KeepDeadMembers,
    /// A replica trusts the batches on its own disk: start-up forgets those it found
    /// damaged, the scrubber finds nothing, and a leader sends what it reads to followers
    /// unchecked (only a consumer's fetch still checks CRCs).
    TrustRecoveredBatches,
    /// A follower never writes back the intact copy of a damaged entry its leader resends.
    SkipFollowerRepair,
    /// A new partition leader starts with an empty producer table: the batches the old
    /// leader wrote are forgotten, and their retries are written again.
    ForgetProducersOnLeaderChange,
    /// A metadata snapshot forgets how many producer ids were handed out: a broker that
    /// loads it (after a restart, or as a new controller catching up) hands them out again.
    ForgetProducerIdsInSnapshot,
    /// The last stable offset is the high watermark: read_committed consumers read the
    /// records of open transactions.
    ReadPastStableOffset,
    /// The transaction coordinator writes a transaction's marker to its first partition
    /// only.
    MarkerToSomePartitions,
    /// OffsetFetch with `require_stable` answers offsets that a transaction still open
    /// has committed as if they were stable: a member taking the partition over starts
    /// from an offset that transaction is about to move.
    ServeUnstableOffsets,
    /// The group coordinator takes transactional offsets from a producer epoch older than
    /// its transaction's marker: a late resend joins the producer's next transaction.
    AcceptFencedTxnOffsets,
    /// The driver's monotonic clock is the wall clock: a clock stepped back stalls every
    /// timer, one stepped forward fires them all at once (and core, trusting its driver,
    /// does not stop on time going back).
    TimersOnWallClock,
    /// Produce never asks the authorizer: a topic's DENY ACLs do not stop writes.
    ProduceIgnoresAcls,
    /// A broker checks a user's SASL logins against the credentials its first login found,
    /// whatever the quorum changed since: an old password keeps working.
    CacheCredentials,
    /// The small state store takes the first copy of a hard state, snapshot or membership
    /// as it is, without its CRC: a flipped bit becomes a wrong term, vote or log start.
    TrustStateCopies,
    /// A follower appends the entries its leader sends as they arrive, without checking
    /// their batches' CRCs: a copy damaged on the way is written, acknowledged and counted
    /// towards the quorum.
    AckDamagedArrivals,
    /// The peer protocol's version bumped naively: a broker names its newest version in the
    /// handshake and refuses any other, so brokers of the old and the new binary cannot
    /// talk while a rolling upgrade is under way.
    StrictPeerVersion,
}

impl Canary {
    /// Every canary, in a stable order.
    pub const ALL: [Canary; 26] = [
        Canary::AckBeforeFsync,
        Canary::SkipRecoveryCrc,
        Canary::ReadAboveHighWatermark,
        Canary::IgnoreFsyncError,
        Canary::VolatileTopics,
        Canary::VoteTwice,
        Canary::AckAllOnLocalAppend,
        Canary::KeepConflictingSuffix,
        Canary::AckCommitBeforeDurable,
        Canary::AcceptStaleCommit,
        Canary::ReuseGeneration,
        Canary::KeepDeadMembers,
        Canary::TrustRecoveredBatches,
        Canary::SkipFollowerRepair,
        Canary::ForgetProducersOnLeaderChange,
        Canary::ForgetProducerIdsInSnapshot,
        Canary::ReadPastStableOffset,
        Canary::MarkerToSomePartitions,
        Canary::ServeUnstableOffsets,
        Canary::AcceptFencedTxnOffsets,
        Canary::TimersOnWallClock,
        Canary::ProduceIgnoresAcls,
        Canary::CacheCredentials,
        Canary::TrustStateCopies,
        Canary::AckDamagedArrivals,
        Canary::StrictPeerVersion,
    ];

    /// The name used on the simulator's command line.
    pub fn name(self) -> &'static str {
        match self {
            Canary::AckBeforeFsync => "ack-before-fsync",
            Canary::SkipRecoveryCrc => "skip-recovery-crc",
            Canary::ReadAboveHighWatermark => "read-above-hw",
            Canary::IgnoreFsyncError => "ignore-fsync-error",
            Canary::VolatileTopics => "volatile-topics",
            Canary::VoteTwice => "vote-twice",
            Canary::AckAllOnLocalAppend => "ack-all-on-local-append",
            Canary::KeepConflictingSuffix => "keep-conflicting-suffix",
            Canary::AckCommitBeforeDurable => "ack-commit-before-durable",
            Canary::AcceptStaleCommit => "accept-stale-commit",
            Canary::ReuseGeneration => "reuse-generation",
            Canary::KeepDeadMembers => "keep-dead-members",
            Canary::TrustRecoveredBatches => "trust-recovered-batches",
            Canary::SkipFollowerRepair => "skip-follower-repair",
            Canary::ForgetProducersOnLeaderChange => "forget-producers-on-leader-change",
            Canary::ForgetProducerIdsInSnapshot => "forget-producer-ids-in-snapshot",
            Canary::ReadPastStableOffset => "read-past-lso",
            Canary::MarkerToSomePartitions => "marker-to-some-partitions",
            Canary::ServeUnstableOffsets => "serve-unstable-offsets",
            Canary::AcceptFencedTxnOffsets => "accept-fenced-txn-offsets",
            Canary::TimersOnWallClock => "timers-on-wall-clock",
            Canary::ProduceIgnoresAcls => "produce-ignores-acls",
            Canary::CacheCredentials => "cache-credentials",
            Canary::TrustStateCopies => "trust-state-copies",
            Canary::AckDamagedArrivals => "ack-damaged-arrivals",
            Canary::StrictPeerVersion => "strict-peer-version",
        }
    }

    /// What the planted bug does.
    pub fn describe(self) -> &'static str {
        match self {
            Canary::AckBeforeFsync => "acks=all answers before the fsync",
            Canary::SkipRecoveryCrc => "recovery keeps batches whose CRC is wrong",
            Canary::ReadAboveHighWatermark => "fetch serves uncommitted data",
            Canary::IgnoreFsyncError => "a failed fsync is reported as done",
            Canary::VolatileTopics => "created topics are not recorded durably",
            Canary::VoteTwice => "a replica votes for two candidates in one term",
            Canary::AckAllOnLocalAppend => "acks=all answers before the batch is committed",
            Canary::KeepConflictingSuffix => "a follower keeps batches its leader replaced",
            Canary::AckCommitBeforeDurable => {
                "an offset commit is acknowledged before it is durable"
            }
            Canary::AcceptStaleCommit => "offset commits from fenced members are accepted",
            Canary::ReuseGeneration => "a rebalance does not bump the generation",
            Canary::KeepDeadMembers => "dead group members are never removed",
            Canary::TrustRecoveredBatches => "a leader serves the damaged batches recovery kept",
            Canary::SkipFollowerRepair => "a follower's damaged batch is never repaired",
            Canary::ForgetProducersOnLeaderChange => {
                "a new leader forgets the idempotent producers' batches"
            }
            Canary::ForgetProducerIdsInSnapshot => {
                "producer ids are handed out again after a metadata snapshot"
            }
            Canary::ReadPastStableOffset => "read_committed reads open transactions' records",
            Canary::MarkerToSomePartitions => {
                "a transaction's marker reaches only its first partition"
            }
            Canary::ServeUnstableOffsets => {
                "require_stable offset fetches see offsets of open transactions"
            }
            Canary::AcceptFencedTxnOffsets => {
                "offsets of an ended transaction are taken into the next one"
            }
            Canary::TimersOnWallClock => "timers run on the wall clock, jumps and all",
            Canary::ProduceIgnoresAcls => "produce writes whatever the ACLs deny",
            Canary::CacheCredentials => "logins are checked against credentials cached forever",
            Canary::TrustStateCopies => "the Raft state is loaded without checking its CRC",
            Canary::AckDamagedArrivals => {
                "a follower acknowledges entries damaged on the way without checking them"
            }
            Canary::StrictPeerVersion => {
                "brokers refuse peers of another protocol version during an upgrade"
            }
        }
    }

    /// Looks a canary up by its name.
    pub fn from_name(name: &str) -> Option<Canary> {
        Canary::ALL.into_iter().find(|c| c.name() == name)
    }

    #[cfg(madsim)]
    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

#[cfg(madsim)]
static PLANTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Plants a canary for the rest of this process (simulation builds only).
#[cfg(madsim)]
pub fn plant(canary: Canary) {
    PLANTED.fetch_or(canary.bit(), std::sync::atomic::Ordering::Relaxed);
}

/// True if `canary` is planted.
#[cfg(madsim)]
pub fn is_planted(canary: Canary) -> bool {
    PLANTED.load(std::sync::atomic::Ordering::Relaxed) & canary.bit() != 0
}

/// True if `canary` is planted: never, outside the simulator.
#[cfg(not(madsim))]
#[inline(always)]
pub const fn is_planted(_canary: Canary) -> bool {
    false
}

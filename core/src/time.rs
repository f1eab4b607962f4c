//! The two clocks every input carries.
//!
//! A broker needs time for two different things, and one clock cannot serve both:
//! - timers (session and election timeouts, heartbeats, request deadlines, transaction
//!   timeouts) need a clock that never goes back and never leaps: a wall clock stepped back
//!   by NTP stops heartbeats, and one stepped forward fires a burst of timeouts at once;
//! - record timestamps, `LogAppendTime`, time-based retention and `segment.ms`, and the
//!   timestamps other brokers and clients read (offset commits, transaction start times)
//!   are about the calendar, so they take the wall clock, jumps and all, as Kafka does.
//!
//! [`Now`] carries both, and each use picks one by name. The rule that keeps them apart:
//! a monotonic time never leaves the process (it is never written to disk nor sent to a
//! peer, since another process's monotonic clock starts elsewhere), and a timer never reads
//! the wall clock. A timer kept across a restart or a change of leader (a transaction's
//! timeout, an empty group's offset retention) is restarted from the monotonic time at which
//! its state was loaded: late, never early.

/// The time of one input, in milliseconds on both clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic: for timers only. Never goes back between two inputs of one broker; its
    /// origin is arbitrary (the driver's start, say).
    pub mono: i64,
    /// Wall clock, milliseconds since the Unix epoch: for timestamps only. May jump either
    /// way.
    pub wall: i64,
}

impl Now {
    /// Both clocks at `ms`: for tests and tools where the two agree.
    pub const fn at(ms: i64) -> Self {
        Now { mono: ms, wall: ms }
    }

    /// `ms` milliseconds later on both clocks.
    #[must_use]
    pub const fn plus(self, ms: i64) -> Self {
        Now {
            mono: self.mono + ms,
            wall: self.wall + ms,
        }
    }
}

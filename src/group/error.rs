//! Group errors, with the numbered codes of docs/PROTOCOL.md ("Groups", "Error codes").
//!
//! In the style of the ZSMP draft's numbered errors: every refusal of a group message or
//! control has a one-byte code that the node logs, counts per group (`group show --json`,
//! `refused`) and never sends back to the peer. Codes `0x01..=0x3f` are "the peer sent
//! something we refuse"; `0x40..` are local misuse (a CLI request that cannot be done).

/// Why a group message, control or request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// 0x01: the bytes do not decode as the named structure.
    #[error("malformed group data: {0}")]
    Malformed(&'static str),
    /// 0x02: the AEAD rejected the ciphertext (wrong key or tampered bytes). Deliberately coarse.
    #[error("group message decryption failed")]
    Decrypt,
    /// 0x03: a signature (membership or message) did not verify.
    #[error("group signature invalid")]
    BadSignature,
    /// 0x04: the group was closed; nothing more is accepted for it.
    #[error("group is closed")]
    Closed,
    /// 0x05: the sender is not a member of the group.
    #[error("sender is not a member of the group")]
    NotMember,
    /// 0x06: no group with this id is known here.
    #[error("unknown group")]
    UnknownGroup,
    /// 0x07: this sender's message number was already received (or is older than the window).
    #[error("replayed group message (generation {generation}, seq {seq})")]
    Replayed {
        /// Sender key generation.
        generation: u32,
        /// Message number in that generation.
        seq: u32,
    },
    /// 0x10: a (generation, seq) of this sender already received came again with a different
    /// ciphertext: the sender encrypted two texts under one message key (for example after
    /// restoring an old backup without re-keying). Dropped, and logged at WARN.
    #[error("group message (generation {generation}, seq {seq}) already received with different content (possible key reuse by the sender)")]
    ConflictingReplay {
        /// Sender key generation.
        generation: u32,
        /// Message number in that generation.
        seq: u32,
    },
    /// 0x08: the message is further ahead of the last one received than allowed.
    #[error("group message gap too big: {got} > {max}")]
    TooBigGap {
        /// Messages skipped.
        got: u32,
        /// The limit, [`super::MAX_SKIP`].
        max: u32,
    },
    /// 0x09: only the creator may do this (invite, close).
    #[error("only the group's creator may do this")]
    NotCreator,
    /// 0x0a: the member declined or left; it sends and receives nothing in this group.
    #[error("member is not active in the group (declined or left)")]
    Inactive,
    /// 0x0b: a bounded buffer is full (messages waiting for a sender key, controls waiting for
    /// their invitation); the item is dropped.
    #[error("group buffer full ({max} items)")]
    BufferFull {
        /// The limit.
        max: usize,
    },
    /// 0x0c: a group message came over the pairwise session of someone other than its author.
    #[error("group message relayed by someone other than its author")]
    SenderMismatch,
    /// 0x0d: the membership breaks a rule (size, name, duplicates, creator missing).
    #[error("invalid membership: {0}")]
    InvalidMembership(&'static str),
    /// 0x0e: a message under a sender key generation older than the current one.
    #[error("stale sender key generation {got} (current {current})")]
    StaleGeneration {
        /// Generation of the message.
        got: u32,
        /// Current generation.
        current: u32,
    },
    /// 0x0f: a chain ran out of message numbers.
    #[error("sender key exhausted")]
    Exhausted,
    /// 0x40: local: the group name or member list given by the user is not usable.
    #[error("{0}")]
    Usage(String),
    /// 0x41: local: this node has not accepted the group (or already answered).
    #[error("not allowed in state {0}")]
    WrongState(&'static str),
    /// 0x42: local: too many groups on this node.
    #[error("too many groups (limit {max})")]
    TooManyGroups {
        /// The limit.
        max: usize,
    },
}

impl GroupError {
    /// The numbered code (docs/PROTOCOL.md, "Groups", "Error codes").
    pub fn code(&self) -> u8 {
        match self {
            GroupError::Malformed(_) => 0x01,
            GroupError::Decrypt => 0x02,
            GroupError::BadSignature => 0x03,
            GroupError::Closed => 0x04,
            GroupError::NotMember => 0x05,
            GroupError::UnknownGroup => 0x06,
            GroupError::Replayed { .. } => 0x07,
            GroupError::TooBigGap { .. } => 0x08,
            GroupError::NotCreator => 0x09,
            GroupError::Inactive => 0x0a,
            GroupError::BufferFull { .. } => 0x0b,
            GroupError::SenderMismatch => 0x0c,
            GroupError::InvalidMembership(_) => 0x0d,
            GroupError::StaleGeneration { .. } => 0x0e,
            GroupError::Exhausted => 0x0f,
            GroupError::ConflictingReplay { .. } => 0x10,
            GroupError::Usage(_) => 0x40,
            GroupError::WrongState(_) => 0x41,
            GroupError::TooManyGroups { .. } => 0x42,
        }
    }

    /// A short stable name for the code (JSON counters, logs).
    pub fn name(&self) -> &'static str {
        match self {
            GroupError::Malformed(_) => "malformed",
            GroupError::Decrypt => "decrypt",
            GroupError::BadSignature => "bad_signature",
            GroupError::Closed => "closed",
            GroupError::NotMember => "not_member",
            GroupError::UnknownGroup => "unknown_group",
            GroupError::Replayed { .. } => "replayed",
            GroupError::TooBigGap { .. } => "gap_too_big",
            GroupError::NotCreator => "not_creator",
            GroupError::Inactive => "inactive",
            GroupError::BufferFull { .. } => "buffer_full",
            GroupError::SenderMismatch => "sender_mismatch",
            GroupError::InvalidMembership(_) => "invalid_membership",
            GroupError::StaleGeneration { .. } => "stale_generation",
            GroupError::Exhausted => "exhausted",
            GroupError::ConflictingReplay { .. } => "conflicting_replay",
            GroupError::Usage(_) => "usage",
            GroupError::WrongState(_) => "wrong_state",
            GroupError::TooManyGroups { .. } => "too_many_groups",
        }
    }

    /// True when the peer is at fault (codes below 0x40).
    pub fn is_peer_fault(&self) -> bool {
        self.code() < 0x40
    }
}

impl From<crate::wire::DecodeError> for GroupError {
    fn from(_: crate::wire::DecodeError) -> Self {
        GroupError::Malformed("msgpack")
    }
}

impl From<crate::sig::BadSignature> for GroupError {
    fn from(_: crate::sig::BadSignature) -> Self {
        GroupError::BadSignature
    }
}

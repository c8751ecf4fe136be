//! The version header each side sends before anything else, and version negotiation.
//!
//! **[gap]** The header is 7 fixed bytes, not MessagePack, so that garbage or a foreign protocol
//! is recognised from the first bytes: `"SREMP"` (ASCII) `|| major || minor`.
//!
//! Negotiation: both sides send their header at once without waiting. A different major
//! version is fatal ([`VersionError::IncompatibleMajor`]); with the same major version both
//! continue at the lower minor version.

/// The magic that opens every SREMP connection.
pub const MAGIC: &[u8; 5] = b"SREMP";
/// Length of the version header on the wire.
pub const HEADER_LEN: usize = 7;

/// A protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Incompatible changes.
    pub major: u8,
    /// Compatible additions.
    pub minor: u8,
}

impl Version {
    /// The version this implementation speaks.
    pub const CURRENT: Version = Version { major: 1, minor: 0 };
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The 7-byte header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionHeader(pub Version);

/// The header was not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The first bytes were not `SREMP`.
    #[error("not a SREMP peer (bad magic {0:02x?})")]
    BadMagic([u8; 5]),
    /// The peer speaks an incompatible major version.
    #[error("incompatible protocol version {theirs} (we speak {ours})")]
    IncompatibleMajor {
        /// Ours.
        ours: Version,
        /// Theirs.
        theirs: Version,
    },
}

impl VersionHeader {
    /// The bytes on the wire.
    pub fn encode(self) -> [u8; HEADER_LEN] {
        let m = MAGIC;
        [m[0], m[1], m[2], m[3], m[4], self.0.major, self.0.minor]
    }

    /// Parses a received header.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, VersionError> {
        let [a, b, c, d, e, major, minor] = *bytes;
        if [a, b, c, d, e] != *MAGIC {
            return Err(VersionError::BadMagic([a, b, c, d, e]));
        }
        Ok(VersionHeader(Version { major, minor }))
    }
}

/// The version both sides continue with, or the reason there is none.
pub fn negotiate(ours: Version, theirs: Version) -> Result<Version, VersionError> {
    if ours.major != theirs.major {
        return Err(VersionError::IncompatibleMajor { ours, theirs });
    }
    Ok(Version {
        major: ours.major,
        minor: ours.minor.min(theirs.minor),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_bytes() {
        let h = VersionHeader(Version::CURRENT);
        assert_eq!(h.encode(), *b"SREMP\x01\x00");
        assert_eq!(VersionHeader::decode(&h.encode()).unwrap(), h);
        assert!(matches!(
            VersionHeader::decode(b"GET / H"),
            Err(VersionError::BadMagic(_))
        ));
    }

    #[test]
    fn negotiation() {
        let v = |major, minor| Version { major, minor };
        assert_eq!(negotiate(v(1, 3), v(1, 1)).unwrap(), v(1, 1));
        assert_eq!(negotiate(v(1, 0), v(1, 9)).unwrap(), v(1, 0));
        assert!(negotiate(v(1, 0), v(2, 0)).is_err());
    }
}

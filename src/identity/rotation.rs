//! Publishing identity updates (`sremp id rename`, `sremp id rotate-noise-key`) and the grace
//! period of rotated-out Noise keys.
//!
//! An update is a new version of the identity: version + 1, `created = now`, re-signed by the
//! Ed25519 key (which never changes). Flow of [`apply_update`]:
//! 1. load `identity.key` and apply the change in memory;
//! 2. for a Noise key rotation, first append the *old* Noise secret to
//!    `previous-noise-keys` with its expiry (`now + grace`), so the old key is never lost even
//!    if we crash between the two writes;
//! 3. replace `identity.key` atomically (temporary file 0600, fsync, rename, fsync the
//!    directory).
//!
//! `previous-noise-keys` (**[gap]**, ours): owner-only (0600, refused otherwise), one line per
//! key, `<64 hex X25519 secret> <expiry, ms since the epoch>`, at most
//! [`MAX_PREVIOUS_NOISE_KEYS`] lines (the oldest go first). A node opens first-contact messages
//! sealed to any unexpired key in it (messages in flight at relays when the key was rotated)
//! and forgets a key when its expiry passes: the line is removed and the secret zeroized.
//! Bad lines are skipped with a warning, never fatal.
//!
//! What it does not do: announcing the update (the node re-registers at rendezvous servers and
//! reconnects to contacts, whose handshakes carry the new version; see `node`).

use super::keys::{open_private, KeyFileError};
use super::UserIdentity;
use crate::time::Timestamp;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// File of rotated-out Noise keys still in their grace period, in the data directory.
pub const PREVIOUS_KEYS_FILE: &str = "previous-noise-keys";
/// Most rotated-out Noise keys kept at once (the oldest are forgotten first).
pub const MAX_PREVIOUS_NOISE_KEYS: usize = 8;
/// Default grace period of a rotated-out Noise key: 7 days, the relays' default retention, so
/// a first-contact message stored at a relay before the rotation can still be opened.
pub const DEFAULT_NOISE_KEY_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest `previous-noise-keys` file read.
const MAX_FILE: u64 = 64 * 1024;

/// What an update changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new username (1 to 40 characters).
    Rename(String),
    /// A fresh Noise static key.
    RotateNoiseKey,
}

/// A rotated-out Noise secret and when it is forgotten.
pub struct PreviousNoiseKey {
    /// The X25519 secret.
    pub secret: Zeroizing<[u8; 32]>,
    /// When it is forgotten.
    pub expires: Timestamp,
}

impl std::fmt::Debug for PreviousNoiseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreviousNoiseKey")
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// The contents of `previous-noise-keys`, oldest first.
#[derive(Debug, Default)]
pub struct PreviousNoiseKeys {
    keys: Vec<PreviousNoiseKey>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(PREVIOUS_KEYS_FILE)
}

fn parse_line(line: &str) -> Option<PreviousNoiseKey> {
    let mut parts = line.split_whitespace();
    let (hex_secret, expires) = (parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let mut secret = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_secret, &mut secret[..]).ok()?;
    Some(PreviousNoiseKey {
        secret,
        expires: Timestamp(expires.parse().ok()?),
    })
}

impl PreviousNoiseKeys {
    /// Reads the file in `dir` (missing: empty). Refuses a file others can read.
    pub fn load(dir: &Path) -> Result<Self, KeyFileError> {
        let p = path(dir);
        let meta = match std::fs::metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(KeyFileError::Io { path: p, source }),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Permissions(p, mode));
            }
        }
        if meta.len() > MAX_FILE {
            return Err(KeyFileError::Corrupt(p, "file too large".into()));
        }
        let text =
            Zeroizing::new(
                std::fs::read_to_string(&p).map_err(|source| KeyFileError::Io {
                    path: p.clone(),
                    source,
                })?,
            );
        let mut keys = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match parse_line(line) {
                Some(k) => keys.push(k),
                None => tracing::warn!(file = %p.display(), "skipping a malformed line"),
            }
        }
        let excess = keys.len().saturating_sub(MAX_PREVIOUS_NOISE_KEYS);
        keys.drain(..excess);
        Ok(PreviousNoiseKeys { keys })
    }

    /// Writes the file in `dir` atomically (0600, fsync, rename, fsync the directory).
    pub fn save(&self, dir: &Path) -> Result<(), KeyFileError> {
        let mut text = Zeroizing::new(String::new());
        for k in &self.keys {
            text.push_str(&hex::encode(&k.secret[..]));
            text.push(' ');
            text.push_str(&k.expires.0.to_string());
            text.push('\n');
        }
        write_private_atomic(dir, PREVIOUS_KEYS_FILE, text.as_bytes())
    }

    /// Adds a rotated-out secret (dropping the oldest beyond [`MAX_PREVIOUS_NOISE_KEYS`]).
    pub fn push(&mut self, secret: [u8; 32], expires: Timestamp) {
        self.keys.push(PreviousNoiseKey {
            secret: Zeroizing::new(secret),
            expires,
        });
        let excess = self.keys.len().saturating_sub(MAX_PREVIOUS_NOISE_KEYS);
        self.keys.drain(..excess);
    }

    /// Forgets every key whose expiry is at or before `now`; returns how many.
    pub fn prune(&mut self, now: Timestamp) -> usize {
        let before = self.keys.len();
        self.keys.retain(|k| k.expires > now);
        before - self.keys.len()
    }

    /// The keys still held, oldest first.
    pub fn keys(&self) -> &[PreviousNoiseKey] {
        &self.keys
    }

    /// The next expiry, if any key is held.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.keys.iter().map(|k| k.expires).min()
    }
}

/// Writes `dir/name` atomically: a temporary file created 0600, written, fsynced, renamed into
/// place, then the directory fsynced.
pub fn write_private_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), KeyFileError> {
    let target = dir.join(name);
    let io = |source| KeyFileError::Io {
        path: target.clone(),
        source,
    };
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = open_private(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Applies `change` to the identity in `dir` (see the module docs for the order of writes) and
/// returns the new identity. A rotated-out Noise key is kept for `grace`.
pub fn apply_update(
    dir: &Path,
    change: &Change,
    grace: Duration,
    now: Timestamp,
) -> Result<UserIdentity, KeyFileError> {
    let mut user = UserIdentity::load_file(dir)?;
    match change {
        Change::Rename(name) => user.update(Some(name), None, None, now)?,
        Change::RotateNoiseKey => {
            let old = Zeroizing::new(user.noise_secret().to_bytes());
            user.rotate_noise_key(now, &mut rand::rngs::OsRng)?;
            let mut prev = PreviousNoiseKeys::load(dir)?;
            prev.prune(now);
            let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
            prev.push(*old, Timestamp(now.0.saturating_add(grace_ms)));
            prev.save(dir)?;
        }
    }
    user.save_file(dir)?;
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Flags;

    #[test]
    fn rename_and_rotate_keep_the_key_and_the_old_noise_secret() {
        let dir = tempfile::tempdir().unwrap();
        let u = UserIdentity::generate(
            "amy",
            Flags::default(),
            Timestamp(1),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        u.create_file(dir.path()).unwrap();
        let old_noise = u.noise_secret().to_bytes();

        let r = apply_update(
            dir.path(),
            &Change::Rename("amelia".into()),
            DEFAULT_NOISE_KEY_GRACE,
            Timestamp(10),
        )
        .unwrap();
        assert_eq!(r.key(), u.key());
        assert_eq!(r.identity().version(), 2);
        assert_eq!(r.identity().username().as_str(), "amelia");
        assert_eq!(r.identity().data().created, Timestamp(10));
        assert_eq!(r.noise_secret().to_bytes(), old_noise);
        assert!(PreviousNoiseKeys::load(dir.path())
            .unwrap()
            .keys()
            .is_empty());
        assert!(apply_update(
            dir.path(),
            &Change::Rename(String::new()),
            DEFAULT_NOISE_KEY_GRACE,
            Timestamp(11)
        )
        .is_err());

        let r = apply_update(
            dir.path(),
            &Change::RotateNoiseKey,
            Duration::from_millis(100),
            Timestamp(20),
        )
        .unwrap();
        assert_eq!(r.identity().version(), 3);
        assert_ne!(r.noise_secret().to_bytes(), old_noise);
        let loaded = UserIdentity::load_file(dir.path()).unwrap();
        assert_eq!(loaded.identity(), r.identity());
        let mut prev = PreviousNoiseKeys::load(dir.path()).unwrap();
        assert_eq!(prev.keys().len(), 1);
        assert_eq!(*prev.keys()[0].secret, old_noise);
        assert_eq!(prev.next_expiry(), Some(Timestamp(120)));
        assert_eq!(prev.prune(Timestamp(119)), 0);
        assert_eq!(prev.prune(Timestamp(120)), 1);
        assert!(prev.keys().is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(PREVIOUS_KEYS_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn previous_keys_file_is_bounded_and_tolerates_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = PreviousNoiseKeys::default();
        for i in 0..20u8 {
            p.push([i; 32], Timestamp(u64::from(i) + 100));
        }
        assert_eq!(p.keys().len(), MAX_PREVIOUS_NOISE_KEYS);
        p.save(dir.path()).unwrap();
        let mut text = std::fs::read_to_string(dir.path().join(PREVIOUS_KEYS_FILE)).unwrap();
        text.push_str("zz 12\n\nnothex\n");
        write_private_atomic(dir.path(), PREVIOUS_KEYS_FILE, text.as_bytes()).unwrap();
        let loaded = PreviousNoiseKeys::load(dir.path()).unwrap();
        assert_eq!(loaded.keys().len(), MAX_PREVIOUS_NOISE_KEYS);
        assert_eq!(*loaded.keys()[0].secret, [12u8; 32]);
    }
}

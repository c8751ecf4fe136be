//! The private half of an identity and its key file.
//!
//! The key file `identity.key` in the data directory holds, as MessagePack
//! `[u8 format_version=1, bin(32) ed25519_seed, bin(32) x25519_secret, bin identity]` where
//! `identity` is the signed [`Identity`] wire form. It is created owner-only (0600) with
//! `O_EXCL` semantics (an existing file is never overwritten), written to a temporary file,
//! fsynced and linked into place. Secrets are zeroized when dropped and never printed: the
//! `Debug` form shows only the public identity.
//!
//! The data directory that holds it is owner-only ([`ensure_private_dir`]);
//! [`load_or_create_identity`] is how `sremp run` and `sremp relay` get their identity (made on
//! first start, its flags brought up to date as a new signed version).

use super::{
    Extensions, Flags, Identity, IdentityError, IdentityKey, IdentityVerifiedData, NoiseKey,
    Username,
};
use crate::time::Timestamp;
use crate::wire::msgpack;
use ed25519_dalek::SigningKey;
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, Zeroizing};

/// File name of the key file inside a data directory.
pub const KEY_FILE: &str = "identity.key";

/// Why loading or saving keys failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// There is already an identity; `init` never overwrites one.
    #[error("an identity already exists at {0} (init never overwrites one)")]
    AlreadyExists(PathBuf),
    /// No identity yet.
    #[error("no identity at {0} (run `sremp init`)")]
    Missing(PathBuf),
    /// The file is readable by others.
    #[error("key file {0} is accessible by group or others (mode {1:o}); run `chmod 600 {0}`")]
    Permissions(PathBuf, u32),
    /// Something that is not a regular file is where the key file belongs.
    #[error("key file {0} is not a regular file (a directory or something else is in the way); move it away so a key file can be created there, or point --data-dir elsewhere")]
    NotAFile(PathBuf),
    /// File system error.
    #[error("key file {path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// What happened.
        source: std::io::Error,
    },
    /// The file does not decode or its identity does not match its keys.
    #[error("key file {0} is corrupt: {1}")]
    Corrupt(PathBuf, String),
    /// The identity inside is invalid.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// A user's identity with its private keys. Zeroized on drop; `Debug` shows no secret.
pub struct UserIdentity {
    identity: Identity,
    signing: SigningKey,
    noise_secret: x25519_dalek::StaticSecret,
}

impl fmt::Debug for UserIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserIdentity")
            .field("identity", &self.identity)
            .field("keys", &"<secret>")
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    format: u8,
    #[serde(with = "crate::wire::bytes::fixed")]
    ed25519_seed: [u8; 32],
    #[serde(with = "crate::wire::bytes::fixed")]
    x25519_secret: [u8; 32],
    identity: serde_bytes::ByteBuf,
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        self.ed25519_seed.zeroize();
        self.x25519_secret.zeroize();
    }
}

impl UserIdentity {
    /// A new identity (version 1) with fresh keys.
    pub fn generate(
        username: &str,
        flags: Flags,
        now: Timestamp,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, IdentityError> {
        let signing = SigningKey::generate(rng);
        let noise_secret = x25519_dalek::StaticSecret::random_from_rng(&mut *rng);
        let data = IdentityVerifiedData {
            username: Username::new(username)?,
            identity_key: IdentityKey(signing.verifying_key().to_bytes()),
            noise_key: NoiseKey(x25519_dalek::PublicKey::from(&noise_secret).to_bytes()),
            flags,
            extensions: None,
            version: 1,
            created: now,
        };
        let identity = Identity::sign(data, &signing)?;
        Ok(UserIdentity {
            identity,
            signing,
            noise_secret,
        })
    }

    /// Rebuilds from secret key bytes (test vectors, deterministic tests).
    pub fn from_secrets(
        ed25519_seed: &[u8; 32],
        x25519_secret: &[u8; 32],
        identity: Identity,
    ) -> Result<Self, IdentityError> {
        let signing = SigningKey::from_bytes(ed25519_seed);
        let noise_secret = x25519_dalek::StaticSecret::from(*x25519_secret);
        if signing.verifying_key().to_bytes() != identity.key().0
            || x25519_dalek::PublicKey::from(&noise_secret).to_bytes() != identity.noise_key().0
        {
            return Err(IdentityError::Invalid(
                "identity does not match its private keys",
            ));
        }
        Ok(UserIdentity {
            identity,
            signing,
            noise_secret,
        })
    }

    /// The public, signed identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The identity key.
    pub fn key(&self) -> IdentityKey {
        self.identity.key()
    }

    /// The Ed25519 signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The X25519 Noise static secret, for the Noise layer only.
    pub fn noise_secret(&self) -> &x25519_dalek::StaticSecret {
        &self.noise_secret
    }

    /// Publishes an update: version + 1, `created = now`, re-signed. Changes the username,
    /// flags or extensions as given; the identity key never changes.
    pub fn update(
        &mut self,
        username: Option<&str>,
        flags: Option<Flags>,
        extensions: Option<Option<Extensions>>,
        now: Timestamp,
    ) -> Result<(), IdentityError> {
        let mut data = self.identity.data().clone();
        if let Some(u) = username {
            data.username = Username::new(u)?;
        }
        if let Some(f) = flags {
            data.flags = f;
        }
        if let Some(e) = extensions {
            data.extensions = e;
        }
        self.resign(data, now)
    }

    /// Rotates the Noise static key (a new version of the identity).
    pub fn rotate_noise_key(
        &mut self,
        now: Timestamp,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), IdentityError> {
        let secret = x25519_dalek::StaticSecret::random_from_rng(rng);
        let mut data = self.identity.data().clone();
        data.noise_key = NoiseKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        self.resign(data, now)?;
        self.noise_secret = secret;
        Ok(())
    }

    fn resign(
        &mut self,
        mut data: IdentityVerifiedData,
        now: Timestamp,
    ) -> Result<(), IdentityError> {
        data.version = data
            .version
            .checked_add(1)
            .ok_or(IdentityError::Invalid("version exhausted"))?;
        data.created = now;
        self.identity = Identity::sign(data, &self.signing)?;
        Ok(())
    }

    /// Path of the key file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(KEY_FILE)
    }

    /// True if `dir` already has an identity.
    pub fn exists(dir: &Path) -> bool {
        Self::path(dir).exists()
    }

    /// Writes a new key file; refuses if one exists.
    pub fn create_file(&self, dir: &Path) -> Result<(), KeyFileError> {
        let path = Self::path(dir);
        let io = |source| KeyFileError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        if path.exists() {
            return Err(KeyFileError::AlreadyExists(path));
        }
        let bytes = Zeroizing::new(self.encode());
        let tmp = dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        {
            let mut f = open_private(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        // hard_link fails if the target exists: no overwrite even when racing another init.
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(KeyFileError::AlreadyExists(path))
            }
            Err(e) => return Err(io(e)),
        }
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Replaces the key file after an update (same identity key), atomically.
    pub fn save_file(&self, dir: &Path) -> Result<(), KeyFileError> {
        let path = Self::path(dir);
        let io = |source| KeyFileError::Io {
            path: path.clone(),
            source,
        };
        let existing = Self::load_file(dir)?;
        if existing.key() != self.key() {
            return Err(KeyFileError::AlreadyExists(path));
        }
        let bytes = Zeroizing::new(self.encode());
        let tmp = dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        {
            let mut f = open_private(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Loads the key file from `dir`, refusing files readable by group or others.
    pub fn load_file(dir: &Path) -> Result<Self, KeyFileError> {
        let path = Self::path(dir);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyFileError::Missing(path))
            }
            Err(source) => return Err(KeyFileError::Io { path, source }),
        };
        if !meta.is_file() {
            return Err(KeyFileError::NotAFile(path));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Permissions(path, mode));
            }
        }
        if meta.len() > 64 * 1024 {
            return Err(KeyFileError::Corrupt(path, "file too large".into()));
        }
        let bytes = Zeroizing::new(std::fs::read(&path).map_err(|source| KeyFileError::Io {
            path: path.clone(),
            source,
        })?);
        let kf: KeyFile = msgpack::decode(&bytes)
            .map_err(|e| KeyFileError::Corrupt(path.clone(), e.to_string()))?;
        if kf.format != 1 {
            return Err(KeyFileError::Corrupt(
                path,
                format!("unknown format {}", kf.format),
            ));
        }
        let identity = Identity::from_bytes(&kf.identity)
            .map_err(|e| KeyFileError::Corrupt(path.clone(), e.to_string()))?;
        UserIdentity::from_secrets(&kf.ed25519_seed, &kf.x25519_secret, identity)
            .map_err(|e| KeyFileError::Corrupt(path, e.to_string()))
    }

    fn encode(&self) -> Vec<u8> {
        let kf = KeyFile {
            format: 1,
            ed25519_seed: self.signing.to_bytes(),
            x25519_secret: self.noise_secret.to_bytes(),
            identity: serde_bytes::ByteBuf::from(self.identity.to_bytes()),
        };
        msgpack::encode(&kf)
    }
}

// ---------------------------------------------------------------------------------------------
// The data directory and the identity in it
// ---------------------------------------------------------------------------------------------

/// The identity flags this process publishes, as the draft means them: `uses_relay` when the
/// node has home relays, `is_relay_server` for a relay-only identity (`sremp
/// relay`). The other two flags are kept as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WantedFlags {
    /// `uses_relay`.
    pub uses_relay: bool,
    /// `is_relay_server`.
    pub is_relay_server: bool,
}

impl WantedFlags {
    /// The flags of `sremp run` (and `init`): `uses_relay` when the node has home relays.
    pub fn node(uses_relay: bool) -> WantedFlags {
        WantedFlags {
            uses_relay,
            is_relay_server: false,
        }
    }

    /// The flags of `sremp relay`.
    pub fn relay() -> WantedFlags {
        WantedFlags {
            uses_relay: false,
            is_relay_server: true,
        }
    }

    /// `current` with these two flags applied.
    pub fn apply(self, current: Flags) -> Flags {
        Flags {
            uses_relay: self.uses_relay,
            is_relay_server: self.is_relay_server,
            ..current
        }
    }
}

/// Loads the identity in `dir`, or creates one (owner-only key file) if there is none; true
/// when it was created. If the stored identity's flags differ from `wanted`, publishes a new
/// version (version + 1, `created = now`, re-signed) and replaces the key file atomically
/// before returning it. The data directory is made owner-only first ([`ensure_private_dir`]).
pub fn load_or_create_identity(
    dir: &Path,
    username: &str,
    wanted: WantedFlags,
) -> Result<(UserIdentity, bool), SetupError> {
    if let Some(old) = ensure_private_dir(dir)? {
        tracing::warn!(
            dir = %dir.display(),
            old_mode = format!("{old:o}"),
            "data directory was accessible by group or others; tightened it to 0700"
        );
    }
    if UserIdentity::exists(dir) {
        let mut user = UserIdentity::load_file(dir)?;
        let current = user.identity().data().flags;
        let flags = wanted.apply(current);
        if flags != current {
            let old = user.identity().version();
            user.update(None, Some(flags), None, Timestamp::now())?;
            user.save_file(dir)?;
            tracing::info!(
                id = %user.key(),
                from = old,
                to = user.identity().version(),
                uses_relay = flags.uses_relay,
                is_relay_server = flags.is_relay_server,
                "identity flags changed; published a new identity version"
            );
        }
        return Ok((user, false));
    }
    let user = UserIdentity::generate(
        username,
        wanted.apply(Flags::default()),
        Timestamp::now(),
        &mut rand::rngs::OsRng,
    )?;
    user.create_file(dir)?;
    Ok((user, true))
}

/// Creates `dir` (and parents) with mode 0700 for the last component.
pub fn create_private_dir(dir: &Path) -> Result<(), DataDirError> {
    ensure_private_dir(dir)?;
    Ok(())
}

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The path exists but is not a directory.
    #[error(
        "data directory {} exists but is not a directory; move it away or choose another --data-dir",
        .0.display()
    )]
    NotADirectory(PathBuf),
    /// Group or others may write into it: someone may have planted files there.
    #[error(
        "data directory {} is writable by group or others (mode {mode:o}); files in it may have been \
         planted by another user: check its contents, then `chmod 700 {}` (or choose another --data-dir)",
        path.display(), path.display()
    )]
    WritableByOthers {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Creating, inspecting or tightening it failed.
    #[error("data directory {}: {what}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// What we were doing.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// Makes sure `dir` is an owner-only directory: creates it (and parents) with mode 0700, or, if
/// it exists, refuses it when it is not a directory or group/other-writable
/// ([`DataDirError::WritableByOthers`]), and tightens it to 0700 when it is only group/other
/// readable. Returns the old mode when it tightened one.
pub fn ensure_private_dir(dir: &Path) -> Result<Option<u32>, DataDirError> {
    let err = |what, source| DataDirError::Io {
        path: dir.to_path_buf(),
        what,
        source,
    };
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(DataDirError::NotADirectory(dir.to_path_buf())),
        Ok(meta) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o7777;
                if mode & 0o022 != 0 {
                    return Err(DataDirError::WritableByOthers {
                        path: dir.to_path_buf(),
                        mode,
                    });
                }
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                        .map_err(|e| err("cannot tighten its mode to 0700", e))?;
                    return Ok(Some(mode));
                }
            }
            #[cfg(not(unix))]
            let _ = meta;
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| err("cannot create it", e))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| err("cannot set its mode to 0700", e))?;
            }
            Ok(None)
        }
        Err(e) => Err(err("cannot inspect it", e)),
    }
}

/// Why [`load_or_create_identity`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The data directory cannot be used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The key file cannot be read or written.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The identity could not be made or re-signed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

pub(crate) fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserIdentity {
        UserIdentity::generate(
            "bob",
            Flags::default(),
            Timestamp(5),
            &mut rand::rngs::OsRng,
        )
        .unwrap()
    }

    #[test]
    fn key_file_round_trip_refuses_overwrite_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let u = user();
        u.create_file(dir.path()).unwrap();
        assert!(matches!(
            user().create_file(dir.path()),
            Err(KeyFileError::AlreadyExists(_))
        ));
        let back = UserIdentity::load_file(dir.path()).unwrap();
        assert_eq!(back.identity(), u.identity());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(UserIdentity::path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(
                UserIdentity::path(dir.path()),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
            assert!(matches!(
                UserIdentity::load_file(dir.path()),
                Err(KeyFileError::Permissions(..))
            ));
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let u = user();
        let dbg = format!("{u:?}");
        let seed_hex = hex::encode(u.signing_key().to_bytes());
        let noise_hex = hex::encode(u.noise_secret().to_bytes());
        assert!(!dbg.contains(&seed_hex) && !dbg.contains(&noise_hex));
        assert!(dbg.contains("<secret>"));
    }

    #[test]
    fn update_bumps_version_and_keeps_identity_key() {
        let mut u = user();
        let key = u.key();
        let old_noise = u.identity().noise_key();
        u.update(Some("bobby"), None, None, Timestamp(10)).unwrap();
        assert_eq!(u.identity().version(), 2);
        assert_eq!(u.identity().data().created, Timestamp(10));
        u.rotate_noise_key(Timestamp(11), &mut rand::rngs::OsRng)
            .unwrap();
        assert_eq!(u.identity().version(), 3);
        assert_eq!(u.key(), key);
        assert_ne!(u.identity().noise_key(), old_noise);
        assert!(Identity::from_bytes(&u.identity().to_bytes()).is_ok());
    }

    #[test]
    fn corrupt_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = UserIdentity::path(dir.path());
        let mut f = open_private(&path).unwrap();
        f.write_all(b"\x94\x01garbage").unwrap();
        drop(f);
        assert!(matches!(
            UserIdentity::load_file(dir.path()),
            Err(KeyFileError::Corrupt(..))
        ));
    }
}

//! Encrypted store backups (`sremp backup`, `sremp restore`).
//!
//! A backup is every record of a store at one point in time ([`Store::export`] holds commits
//! back while it copies), encrypted with a 32-byte key the user keeps in a key file. The file
//! format (byte-exact in `docs/PROTOCOL.md`, "Store backups"; vector in
//! `tests/vectors/backup.json`):
//!
//! ```text
//! header  = "SREMPBK1" ‖ chunk_size u32 BE (65536) ‖ nonce_prefix[19] ‖ 0x00      (32 bytes)
//! chunk i = XChaCha20-Poly1305(key, nonce = nonce_prefix ‖ i u32 BE ‖ last u8,
//!                              aad = header, plaintext[chunk_size or less, last only])
//! ```
//!
//! This is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár): every chunk is
//! authenticated with its position and whether it is the last, so reordering, dropping,
//! truncating or extending the file fails authentication. Every chunk but the last holds
//! exactly `chunk_size` plaintext bytes; the last holds 0..=`chunk_size`. The plaintext is
//! `record* end`, `record = 0x01 ‖ tree u8 ‖ key_len u32 BE ‖ key ‖ value_len u32 BE ‖ value`,
//! `end = 0x00 ‖ record_count u64 BE`, nothing after it.
//!
//! The key file holds the key as 64 hex digits and a newline, mode 0600.
//!
//! The codec ([`Writer`], [`Reader`]) is sans-I/O over `std::io` traits; [`write_backup`] and
//! [`restore_backup`] are the file-level operations the node and the CLI call.

use crate::store::{Store, StoreError};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The file magic.
pub const MAGIC: &[u8; 8] = b"SREMPBK1";
/// Plaintext bytes per chunk (every chunk but the last).
pub const CHUNK_SIZE: usize = 65536;
/// Header length.
pub const HEADER_LEN: usize = 32;
/// Largest chunk size a reader accepts from a header (bounds memory).
const MAX_CHUNK: usize = 1 << 20;
/// Largest key or value a reader accepts (bounds memory).
const MAX_FIELD: usize = 64 << 20;
const TAG: usize = 16;

/// A backup failure.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing a file.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The key file is not 64 hex digits.
    #[error("{0}: not a backup key file (expected 64 hex digits)")]
    BadKeyFile(PathBuf),
    /// The key file does not exist.
    #[error("{0}: no such key file (the key `sremp backup` created with the backup is needed)")]
    NoKeyFile(PathBuf),
    /// Not a backup file, or an unsupported version.
    #[error("not an sremp backup file (bad header)")]
    BadHeader,
    /// A chunk did not authenticate: wrong key, or the file was modified or truncated.
    #[error("the backup does not authenticate: wrong key, or the file was modified or truncated")]
    Authentication,
    /// The decrypted content is malformed (only possible with a forged key holder).
    #[error("the backup content is malformed: {0}")]
    Malformed(String),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn ioe(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let context = context.into();
    move |source| BackupError::Io { context, source }
}

/// A backup key (32 bytes), wiped on drop.
pub struct BackupKey(Zeroizing<[u8; 32]>);

impl BackupKey {
    /// The key from its bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        BackupKey(Zeroizing::new(b))
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self, BackupError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackupError::NoKeyFile(path.to_path_buf()))
            }
            Err(e) => return Err(ioe(format!("reading {}", path.display()))(e)),
        };
        let mut k = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), &mut k[..])
            .map_err(|_| BackupError::BadKeyFile(path.to_path_buf()))?;
        Ok(BackupKey(k))
    }

    /// Reads the key file, or creates it (a new random key, mode 0600) when it does not exist.
    /// Returns the key and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), BackupError> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        let mut k = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k[..]);
        let text = Zeroizing::new(format!("{}\n", hex::encode(&k[..])));
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(ioe(format!("creating {}", path.display())))?
        };
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(ioe(format!("writing {}", path.display())))?;
        Ok((BackupKey(k), true))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.0).into())
    }
}

fn nonce(prefix: &[u8; 19], counter: u32, last: bool) -> XNonce {
    let mut n = [0u8; 24];
    n[..19].copy_from_slice(prefix);
    n[19..23].copy_from_slice(&counter.to_be_bytes());
    n[23] = u8::from(last);
    n.into()
}

/// Encrypts a record stream into a backup.
pub struct Writer<W: Write> {
    out: W,
    cipher: XChaCha20Poly1305,
    prefix: [u8; 19],
    header: [u8; HEADER_LEN],
    buf: Vec<u8>,
    counter: u32,
    records: u64,
    written: u64,
}

impl<W: Write> Writer<W> {
    /// Writes the header. `nonce_prefix` must be random for every backup made with a key.
    pub fn new(mut out: W, key: &BackupKey, nonce_prefix: [u8; 19]) -> std::io::Result<Self> {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&(CHUNK_SIZE as u32).to_be_bytes());
        header[12..31].copy_from_slice(&nonce_prefix);
        out.write_all(&header)?;
        Ok(Writer {
            out,
            cipher: key.cipher(),
            prefix: nonce_prefix,
            header,
            buf: Vec::with_capacity(2 * CHUNK_SIZE),
            counter: 0,
            records: 0,
            written: HEADER_LEN as u64,
        })
    }

    fn emit(&mut self, last: bool) -> std::io::Result<()> {
        let n = self.buf.len().min(CHUNK_SIZE);
        let plain: Vec<u8> = self.buf.drain(..n).collect();
        let ct = self
            .cipher
            .encrypt(
                &nonce(&self.prefix, self.counter, last),
                Payload {
                    msg: &plain,
                    aad: &self.header,
                },
            )
            .map_err(|_| std::io::Error::other("encryption failed"))?;
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| std::io::Error::other("backup too large"))?;
        self.out.write_all(&ct)?;
        self.written += ct.len() as u64;
        Ok(())
    }

    /// Appends one record.
    pub fn record(&mut self, tree: u8, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        let too_big = || std::io::Error::other("record too large for a backup");
        if key.len() > MAX_FIELD || value.len() > MAX_FIELD {
            return Err(too_big());
        }
        self.buf.push(1);
        self.buf.push(tree);
        self.buf.extend_from_slice(
            &u32::try_from(key.len())
                .map_err(|_| too_big())?
                .to_be_bytes(),
        );
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(
            &u32::try_from(value.len())
                .map_err(|_| too_big())?
                .to_be_bytes(),
        );
        self.buf.extend_from_slice(value);
        self.records += 1;
        // Keep the tail (at most one chunk) for `finish`: the last chunk carries the flag.
        while self.buf.len() > CHUNK_SIZE {
            self.emit(false)?;
        }
        Ok(())
    }

    /// Writes the end record and the last chunk; returns the output, records and bytes written.
    pub fn finish(mut self) -> std::io::Result<(W, u64, u64)> {
        self.buf.push(0);
        self.buf.extend_from_slice(&self.records.to_be_bytes());
        while self.buf.len() > CHUNK_SIZE {
            self.emit(false)?;
        }
        self.emit(true)?;
        self.out.flush()?;
        Ok((self.out, self.records, self.written))
    }
}

/// Decrypts and parses a backup, verifying every chunk.
pub struct Reader<R: BufRead> {
    input: R,
    cipher: XChaCha20Poly1305,
    prefix: [u8; 19],
    header: [u8; HEADER_LEN],
    chunk_size: usize,
    counter: u32,
    plain: Vec<u8>,
    pos: usize,
    done: bool,
    records: u64,
}

impl<R: BufRead> Reader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R, key: &BackupKey) -> Result<Self, BackupError> {
        let mut header = [0u8; HEADER_LEN];
        input
            .read_exact(&mut header)
            .map_err(|_| BackupError::BadHeader)?;
        if &header[..8] != MAGIC || header[31] != 0 {
            return Err(BackupError::BadHeader);
        }
        let mut cs = [0u8; 4];
        cs.copy_from_slice(&header[8..12]);
        let chunk_size = u32::from_be_bytes(cs) as usize;
        if chunk_size == 0 || chunk_size > MAX_CHUNK {
            return Err(BackupError::BadHeader);
        }
        let mut prefix = [0u8; 19];
        prefix.copy_from_slice(&header[12..31]);
        Ok(Reader {
            input,
            cipher: key.cipher(),
            prefix,
            header,
            chunk_size,
            counter: 0,
            plain: Vec::new(),
            pos: 0,
            done: false,
            records: 0,
        })
    }

    /// Decrypts the next chunk into `plain`. False when the last chunk was already read.
    fn next_chunk(&mut self) -> Result<bool, BackupError> {
        if self.done {
            return Ok(false);
        }
        let want = self.chunk_size + TAG;
        let mut ct = Vec::with_capacity(want);
        (&mut self.input)
            .take(want as u64)
            .read_to_end(&mut ct)
            .map_err(ioe("reading the backup"))?;
        let at_eof = self
            .input
            .fill_buf()
            .map_err(ioe("reading the backup"))?
            .is_empty();
        // A full chunk followed by more data is not the last; anything else must be.
        let last = ct.len() < want || at_eof;
        let plain = self
            .cipher
            .decrypt(
                &nonce(&self.prefix, self.counter, last),
                Payload {
                    msg: &ct,
                    aad: &self.header,
                },
            )
            .map_err(|_| BackupError::Authentication)?;
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| BackupError::Malformed("too many chunks".into()))?;
        self.plain.drain(..self.pos);
        self.pos = 0;
        self.plain.extend_from_slice(&plain);
        self.done = last;
        Ok(true)
    }

    /// `n` plaintext bytes, decrypting chunks as needed.
    fn take(&mut self, n: usize) -> Result<Vec<u8>, BackupError> {
        while self.plain.len() - self.pos < n {
            if !self.next_chunk()? {
                return Err(BackupError::Malformed("the content ends early".into()));
            }
        }
        let out = self
            .plain
            .get(self.pos..self.pos + n)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| BackupError::Malformed("the content ends early".into()))?;
        self.pos += n;
        Ok(out)
    }

    fn take_u32(&mut self) -> Result<usize, BackupError> {
        let b = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(&b);
        Ok(u32::from_be_bytes(a) as usize)
    }

    /// The next record `(tree, key, value)`, or `None` after the end record (which is checked:
    /// the count matches and nothing follows).
    #[allow(clippy::type_complexity)]
    pub fn next_record(&mut self) -> Result<Option<(u8, Vec<u8>, Vec<u8>)>, BackupError> {
        let tag = self.take(1)?;
        match tag.first() {
            Some(1) => {
                let tree = self.take(1)?.first().copied().unwrap_or_default();
                let kl = self.take_u32()?;
                if kl > MAX_FIELD {
                    return Err(BackupError::Malformed("key too long".into()));
                }
                let key = self.take(kl)?;
                let vl = self.take_u32()?;
                if vl > MAX_FIELD {
                    return Err(BackupError::Malformed("value too long".into()));
                }
                let value = self.take(vl)?;
                self.records += 1;
                Ok(Some((tree, key, value)))
            }
            Some(0) => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(&b);
                if u64::from_be_bytes(a) != self.records {
                    return Err(BackupError::Malformed("record count mismatch".into()));
                }
                // The end record must end the last chunk.
                while self.next_chunk()? {}
                if self.pos != self.plain.len() {
                    return Err(BackupError::Malformed("data after the end record".into()));
                }
                Ok(None)
            }
            _ => Err(BackupError::Malformed("unknown record tag".into())),
        }
    }
}

/// What [`write_backup`] wrote.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct BackupSummary {
    /// The backup file.
    pub out: String,
    /// Records in it.
    pub records: u64,
    /// File size in bytes.
    pub bytes: u64,
}

/// Writes a point-in-time backup of `store` to `out` (through `<out>.tmp`, fsynced, then
/// renamed; mode 0600) encrypted with the key in `key_file` (which must exist).
pub fn write_backup(
    store: &dyn Store,
    out: &Path,
    key_file: &Path,
) -> Result<BackupSummary, BackupError> {
    let key = BackupKey::load(key_file)?;
    let mut prefix = [0u8; 19];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut prefix);
    let mut tmp_name = out.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = out.with_file_name(tmp_name);
    let result = write_file(store, out, &tmp, &key, prefix);
    match result {
        Ok((records, bytes)) => Ok(BackupSummary {
            out: out.display().to_string(),
            records,
            bytes,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes the backup to `tmp`, fsyncs it and renames it to `out`; returns (records, bytes).
fn write_file(
    store: &dyn Store,
    out: &Path,
    tmp: &Path,
    key: &BackupKey,
    prefix: [u8; 19],
) -> Result<(u64, u64), BackupError> {
    let ctx = format!("writing {}", tmp.display());
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)
            .map_err(ioe(ctx.clone()))?
    };
    let mut w =
        Writer::new(std::io::BufWriter::new(file), key, prefix).map_err(ioe(ctx.clone()))?;
    let mut io_err = None;
    store.export(&mut |tree, k, v| {
        w.record(tree, k, v).map_err(|e| {
            let msg = e.to_string();
            io_err = Some(e);
            StoreError::Aborted(msg)
        })
    })?;
    if let Some(e) = io_err {
        return Err(ioe(ctx)(e));
    }
    let (buf, records, bytes) = w.finish().map_err(ioe(ctx.clone()))?;
    let file = buf
        .into_inner()
        .map_err(|e| ioe(ctx.clone())(e.into_error()))?;
    file.sync_all().map_err(ioe(ctx))?;
    std::fs::rename(tmp, out).map_err(ioe(format!("renaming to {}", out.display())))?;
    Ok((records, bytes))
}

/// `Tree::Meta` key written by [`restore_backup`] when the backup holds group state (keys
/// starting `group/g/`): value the restore time (unix seconds, u64 BE). The node, at its next
/// start and before anything else runs, replaces its sender key in every group by a fresh
/// generation above that time and deletes the key (`node::groups`, docs/PROTOCOL.md "Sender
/// keys after a restore").
pub const GROUPS_RESTORED_KEY: &[u8] = b"group/restored";

/// Replaces the store in `db_dir` (its process stopped) with the backup `file`, decrypted
/// with the key in `key_file`. See [`crate::store::restore_store`] for the order of the file
/// operations; a backup that fails to authenticate anywhere leaves everything untouched.
///
/// Ratchet sessions (`Tree::Sessions`) are not restored: the state in a backup is older than
/// what the peers hold, and sending on it would encrypt new messages under message keys
/// already used after the backup was taken. With no session, the first message from each
/// contact is answered with a session reset saying what was last recorded from it, and the
/// contact starts a new session and re-sends what the restored store lacks
/// (docs/PROTOCOL.md, "Session recovery"). Group sender keys are restored but marked
/// ([`GROUPS_RESTORED_KEY`]) for replacement at the next start, for the same reason.
/// `records` counts the records written.
pub fn restore_backup(
    db_dir: &Path,
    file: &Path,
    key_file: &Path,
    force: bool,
) -> Result<crate::store::Restored, BackupError> {
    let key = BackupKey::load(key_file)?;
    let open = || -> Result<Reader<BufReader<std::fs::File>>, BackupError> {
        let f = std::fs::File::open(file).map_err(ioe(format!("opening {}", file.display())))?;
        Reader::new(BufReader::with_capacity(CHUNK_SIZE + TAG, f), &key)
    };
    // First pass: authenticate and parse everything before touching any store.
    let mut r = open()?;
    while r.next_record()?.is_some() {}
    // Second pass: write. (A file changed between the passes still fails authentication.)
    let mut r = open()?;
    let mut failure: Option<BackupError> = None;
    let mut groups = false;
    let restored = crate::store::restore_store(db_dir, force, &mut |sink| loop {
        match r.next_record() {
            Ok(Some((t, _, _))) if t == crate::store::Tree::Sessions as u8 => {}
            Ok(Some((t, k, v))) => {
                groups |= t == crate::store::Tree::Meta as u8 && k.starts_with(b"group/g/");
                if !(t == crate::store::Tree::Meta as u8 && k == GROUPS_RESTORED_KEY) {
                    sink(t, k, v)?;
                }
            }
            Ok(None) => {
                if groups {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or_default();
                    sink(
                        crate::store::Tree::Meta as u8,
                        GROUPS_RESTORED_KEY.to_vec(),
                        now.to_be_bytes().to_vec(),
                    )?;
                }
                return Ok(());
            }
            Err(e) => {
                let msg = e.to_string();
                failure = Some(e);
                return Err(StoreError::Aborted(msg));
            }
        }
    });
    match (restored, failure) {
        (_, Some(e)) => Err(e),
        (r, None) => Ok(r?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(records: &[(u8, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let key = BackupKey::from_bytes([7; 32]);
        let mut w = Writer::new(Vec::new(), &key, [3; 19]).unwrap();
        for (t, k, v) in records {
            w.record(*t, k, v).unwrap();
        }
        let (out, n, bytes) = w.finish().unwrap();
        assert_eq!(n, records.len() as u64);
        assert_eq!(bytes, out.len() as u64);
        let mut r = Reader::new(&out[..], &key).unwrap();
        let mut got = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            got.push(rec);
        }
        assert_eq!(got, records);
        out
    }

    #[test]
    fn roundtrips_across_chunk_boundaries() {
        roundtrip(&[]);
        roundtrip(&[(1, b"k".to_vec(), vec![9; 10])]);
        // Exactly fills chunks, and spans several.
        let big: Vec<_> = (0..40u8)
            .map(|i| (4, vec![i; 8], vec![i; 5000 + usize::from(i)]))
            .collect();
        roundtrip(&big);
        roundtrip(&[(2, vec![], vec![0; 3 * CHUNK_SIZE])]);
    }

    #[test]
    fn every_modification_fails_authentication() {
        let recs: Vec<_> = (0..30u8).map(|i| (4, vec![i; 8], vec![i; 5000])).collect();
        let good = roundtrip(&recs);
        let key = BackupKey::from_bytes([7; 32]);
        let read_all = |b: &[u8], key: &BackupKey| -> Result<(), BackupError> {
            let mut r = Reader::new(b, key)?;
            while r.next_record()?.is_some() {}
            Ok(())
        };
        // Flipped bytes anywhere after the magic, truncation at and between chunk boundaries,
        // an appended or dropped chunk, the wrong key.
        for at in [12, 31, 40, 70_000, good.len() - 1] {
            let mut b = good.clone();
            b[at] ^= 1;
            assert!(read_all(&b, &key).is_err(), "flip at {at}");
        }
        for len in [
            HEADER_LEN,
            HEADER_LEN + CHUNK_SIZE + TAG,
            good.len() - 1,
            100,
        ] {
            assert!(read_all(&good[..len], &key).is_err(), "truncated to {len}");
        }
        let mut longer = good.clone();
        longer.extend_from_slice(&[0; 17]);
        assert!(read_all(&longer, &key).is_err());
        let wrong = BackupKey::from_bytes([8; 32]);
        assert!(matches!(
            read_all(&good, &wrong),
            Err(BackupError::Authentication)
        ));
        read_all(&good, &key).unwrap();
    }
}

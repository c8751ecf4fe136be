//! Everything a transfer keeps on disk, and the receiver's temporary file.
//!
//! `<data dir>/files/` (mode 0700) holds per transfer:
//! - `<id>.json`: the [`Record`] (written to `<id>.json.tmp`, fsynced, renamed, directory
//!   fsynced);
//! - `<id>.have` (incoming): the bitmap of chunks written *and* fsynced to the temporary file;
//! - `<id>.sent` (outgoing): the bitmap of chunks a relay acknowledged (so a restarted sender
//!   does not store them again).
//!
//! The receiver writes chunks into `<target dir>/.sremp-<id>.part` (created with `O_EXCL` and
//! `O_NOFOLLOW`, mode 0600), fsyncs it before it records the chunks in `<id>.have`, and at the
//! end hashes the whole file, fsyncs it, links it to a free name in the target directory
//! (`name`, then `name (1)`, …: never replacing an existing file) and fsyncs the directory.
//! Nothing outside the target directory and `files/` is ever touched.

use super::name::{self, TEMP_PREFIX};
use super::transfer::{Bitmap, Record};
use super::{FileError, TransferId};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Most transfer records loaded at start (the oldest beyond it are ignored).
pub const MAX_RECORDS: usize = 10_000;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> FileError {
    let context = context.into();
    move |source| FileError::from_io(context, source)
}

/// fsyncs a directory.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", dir.display())))
}

/// Writes `bytes` to `path` atomically and durably (temporary file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io(format!("writing {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming {}", tmp.display())))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// The transfer directory.
#[derive(Clone, Debug)]
pub struct Dir {
    root: PathBuf,
}

impl Dir {
    /// Opens (creates, mode 0700) `<data dir>/files`.
    pub fn open(data_dir: &Path) -> Result<Dir, FileError> {
        let root = data_dir.join("files");
        std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("setting the mode of {}", root.display())))?;
        Ok(Dir { root })
    }

    fn path(&self, id: &TransferId, ext: &str) -> PathBuf {
        self.root.join(format!("{id}.{ext}"))
    }

    /// Saves a record durably.
    pub fn save(&self, r: &Record) -> Result<(), FileError> {
        let bytes = serde_json::to_vec_pretty(r)
            .map_err(|e| FileError::Corrupt(format!("encoding a record: {e}")))?;
        write_atomic(&self.path(&r.id, "json"), &bytes)
    }

    /// Every record (newest last), at most [`MAX_RECORDS`]; damaged ones are logged and skipped.
    pub fn load_all(&self) -> Result<Vec<Record>, FileError> {
        let mut out = Vec::new();
        let rd = std::fs::read_dir(&self.root)
            .map_err(io(format!("reading {}", self.root.display())))?;
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let parsed = std::fs::read(&p)
                .ok()
                .filter(|b| b.len() <= 64 * 1024)
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
                .filter(|r| p.file_stem().and_then(|s| s.to_str()) == Some(&r.id.to_string()));
            match parsed {
                Some(r) => out.push(r),
                None => tracing::warn!(file = %p.display(), "damaged transfer record skipped"),
            }
        }
        out.sort_by_key(|r| (r.created_at, r.id.0));
        let skip = out.len().saturating_sub(MAX_RECORDS);
        Ok(out.split_off(skip))
    }

    /// Saves a bitmap (`have` or `sent`) durably.
    pub fn save_bitmap(&self, id: &TransferId, kind: &str, b: &Bitmap) -> Result<(), FileError> {
        write_atomic(&self.path(id, kind), b.as_bytes())
    }

    /// Loads a bitmap; an empty one when it is missing or does not fit `total`.
    pub fn load_bitmap(&self, id: &TransferId, kind: &str, total: u64) -> Bitmap {
        std::fs::read(self.path(id, kind))
            .ok()
            .and_then(|b| Bitmap::from_bytes(b, total))
            .unwrap_or_else(|| Bitmap::new(total))
    }

    /// Removes a transfer's bitmaps (when it is final).
    pub fn remove_bitmaps(&self, id: &TransferId) {
        let _ = std::fs::remove_file(self.path(id, "have"));
        let _ = std::fs::remove_file(self.path(id, "sent"));
    }
}

/// The receiver's temporary file for a transfer in `dir`.
pub fn temp_path(dir: &Path, id: &TransferId) -> PathBuf {
    dir.join(format!("{TEMP_PREFIX}{id}.part"))
}

/// The receiver's temporary file, written at chunk offsets.
#[derive(Debug)]
pub struct PartFile {
    file: File,
    path: PathBuf,
}

impl PartFile {
    /// Opens the temporary file of a transfer, creating it (never following a symlink, never
    /// opening something that is not a regular file).
    pub fn open(dir: &Path, id: &TransferId) -> Result<PartFile, FileError> {
        let path = temp_path(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        let meta = file
            .metadata()
            .map_err(io(format!("inspecting {}", path.display())))?;
        if !meta.is_file() {
            return Err(FileError::NotAFile(path));
        }
        Ok(PartFile { file, path })
    }

    /// Writes one verified chunk at `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), FileError> {
        self.file
            .write_all_at(data, offset)
            .map_err(io(format!("writing {}", self.path.display())))
    }

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<(), FileError> {
        self.file
            .sync_data()
            .map_err(io(format!("syncing {}", self.path.display())))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// SHA-256 and length of a file, read in 1 MiB pieces.
pub fn hash_file(path: &Path) -> Result<([u8; 32], u64), FileError> {
    let mut f = File::open(path).map_err(io(format!("reading {}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut len = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((h.finalize().into(), len))
}

/// Checks the temporary file of a complete transfer against the declared size and hash, then
/// moves it into `dir` under `name` (or `name (n)` if taken) without replacing anything.
/// On a mismatch the temporary file is removed and nothing else is created.
pub fn finalize(
    dir: &Path,
    id: &TransferId,
    name: &str,
    size: u64,
    sha256: &[u8; 32],
) -> Result<PathBuf, FileError> {
    let temp = temp_path(dir, id);
    let (got, len) = hash_file(&temp)?;
    if len != size {
        let _ = std::fs::remove_file(&temp);
        return Err(FileError::SizeMismatch {
            declared: size,
            got: len,
        });
    }
    if &got != sha256 {
        let _ = std::fs::remove_file(&temp);
        return Err(FileError::HashMismatch);
    }
    File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("syncing {}", temp.display())))?;
    name::check(name)?;
    for n in 0..1000u32 {
        let candidate = if n == 0 {
            dir.join(name)
        } else {
            dir.join(name::numbered(name, n))
        };
        match std::fs::hard_link(&temp, &candidate) {
            Ok(()) => {
                let _ = std::fs::remove_file(&temp);
                sync_dir(dir)?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(FileError::from_io(
                    format!("saving into {}", dir.display()),
                    e,
                ))
            }
        }
    }
    Err(FileError::NoFreeName(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalize_never_replaces_and_checks_the_hash() {
        let d = tempfile::tempdir().unwrap();
        let id = TransferId([1; 16]);
        std::fs::write(d.path().join("a.txt"), b"old").unwrap();
        let p = PartFile::open(d.path(), &id).unwrap();
        p.write_at(0, b"hello").unwrap();
        p.sync().unwrap();
        let sha: [u8; 32] = Sha256::digest(b"hello").into();
        let out = finalize(d.path(), &id, "a.txt", 5, &sha).unwrap();
        assert_eq!(out, d.path().join("a (1).txt"));
        assert_eq!(std::fs::read(d.path().join("a.txt")).unwrap(), b"old");
        assert_eq!(std::fs::read(&out).unwrap(), b"hello");
        assert!(!temp_path(d.path(), &id).exists());
        // Wrong hash: temp removed, nothing created.
        let id2 = TransferId([2; 16]);
        let p = PartFile::open(d.path(), &id2).unwrap();
        p.write_at(0, b"hellO").unwrap();
        assert!(matches!(
            finalize(d.path(), &id2, "b.txt", 5, &sha),
            Err(FileError::HashMismatch)
        ));
        assert!(!d.path().join("b.txt").exists());
        assert!(!temp_path(d.path(), &id2).exists());
    }

    #[test]
    fn temp_file_does_not_follow_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let id = TransferId([3; 16]);
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, temp_path(d.path(), &id)).unwrap();
        assert!(PartFile::open(d.path(), &id).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}

//! File names from peers: a received name is used only if it is one plain path component.
//!
//! A peer chooses the name in its offer; the receiver joins it to the target directory. So a
//! name must never climb out of that directory or name something special: it is refused (never
//! "cleaned up") when it is empty, longer than [`MAX_NAME`] bytes, `.` or `..`, or contains a
//! `/`, a `\`, a NUL or another control character, or starts with our temporary-file prefix
//! [`TEMP_PREFIX`]. What passes is a single component, so `dir.join(name)` stays in `dir`.

/// Longest file name accepted, in bytes (the usual file-system limit).
pub const MAX_NAME: usize = 255;
/// Prefix of the receiver's temporary files (`.sremp-<transfer id>.part`); offered names may
/// not start with it.
pub const TEMP_PREFIX: &str = ".sremp-";

/// Why a file name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty.
    #[error("empty file name")]
    Empty,
    /// Too long.
    #[error("file name is {0} bytes (max {MAX_NAME})")]
    TooLong(usize),
    /// `.` or `..`.
    #[error("file name {0:?} names a directory")]
    Dots(String),
    /// Contains a path separator: it would leave the target directory.
    #[error("file name contains a path separator")]
    Separator,
    /// Contains NUL or another control character.
    #[error("file name contains a control character")]
    Control,
    /// Starts with the receiver's temporary-file prefix.
    #[error("file name starts with the reserved prefix {TEMP_PREFIX}")]
    Reserved,
}

/// Checks that `name` is one plain path component (see the module doc).
pub fn check(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME {
        return Err(NameError::TooLong(name.len()));
    }
    if name == "." || name == ".." {
        return Err(NameError::Dots(name.to_string()));
    }
    if name.contains('/') || name.contains('\\') {
        return Err(NameError::Separator);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control);
    }
    if name.starts_with(TEMP_PREFIX) {
        return Err(NameError::Reserved);
    }
    Ok(())
}

/// The name to offer for a local path: its last component, if that is a valid name.
pub fn of_path(path: &std::path::Path) -> Result<String, NameError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or(NameError::Empty)?
        .to_string();
    check(&name)?;
    Ok(name)
}

/// `name` with ` (n)` inserted before its extension (`a.txt` → `a (2).txt`), for `n >= 1`.
pub fn numbered(name: &str, n: u32) -> String {
    match name.rfind('.') {
        Some(dot) if dot > 0 => {
            let (stem, ext) = name.split_at(dot);
            format!("{stem} ({n}){ext}")
        }
        _ => format!("{name} ({n})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_everything_that_could_leave_the_directory() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/etc/passwd",
            "..\\x",
            "a\0b",
            "a\nb",
            ".sremp-x.part",
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check(&"a".repeat(256)), Err(NameError::TooLong(256)));
        for good in ["a.txt", "..a", "a..", "été.pdf", ".profile", "x y"] {
            assert_eq!(check(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn numbering() {
        assert_eq!(numbered("a.txt", 2), "a (2).txt");
        assert_eq!(numbered("a", 1), "a (1)");
        assert_eq!(numbered(".profile", 1), ".profile (1)");
    }
}

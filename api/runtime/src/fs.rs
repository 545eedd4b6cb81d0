//! Atomic file writes: readers (Prometheus' file discovery, the webhook's
//! certificate reloader, an agent restarting after a crash) see the old
//! file or the new one, never half of one.

use std::{io::Write, path::Path};

/// Writes `bytes` to a temporary file beside `path` with permissions `mode`
/// (e.g. `0o600` for a private key), flushes it to disk, and renames it
/// over `path`. The directory must exist. On error the temporary file is
/// removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    // Hidden and named after the target, so a leftover (power cut between
    // create and rename) says what it was.
    let prefix = format!(".{}.", file_name.to_string_lossy());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Created with the mode, not chmod-ed after: a key is never readable
        // by others, not even for a moment.
        builder.permissions(std::fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = builder.tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    // Make the rename itself durable; a directory that cannot be opened for
    // this (some filesystems) still has the new file.
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_keeps_the_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tls.key");
        write_atomic(&path, b"old", 0o600).expect("first write");
        write_atomic(&path, b"new", 0o600).expect("second write");
        assert_eq!(std::fs::read(&path).expect("read"), b"new");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let public = dir.path().join("tls.crt");
            write_atomic(&public, b"cert", 0o644).expect("write");
            let mode = std::fs::metadata(&public)
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o644);
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "no temporary file left: {left:?}");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(write_atomic(&dir.path().join("no/such/file"), b"x", 0o644).is_err());
    }
}

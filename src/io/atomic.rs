use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` through a temp file in the same folder and a rename: the
/// target is either the old file or the complete new one, never a partial one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_many(&[(path, bytes)])
}

/// Writes several files that belong together (a native graph and its weights): every
/// temp file is written completely before any is renamed into place, so a failure
/// while writing leaves all targets as they were.
pub fn write_atomic_many(files: &[(&Path, &[u8])]) -> Result<()> {
    // A rename onto a folder fails; find that before any file is replaced.
    for (path, _) in files {
        if path.is_dir() {
            return Err(Error::File { path: path.to_path_buf(), why: "is a folder; cannot write a model file there".into() });
        }
    }
    let mut staged = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let io = |e: std::io::Error| Error::Io { path: path.to_path_buf(), source: e };
        let mut b = tempfile::Builder::new();
        b.prefix(".repfuse-").suffix(".tmp");
        // Ordinary permissions (0666 less the umask), not tempfile's private 0600: a
        // model server running as another user must be able to read the model.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            b.permissions(std::fs::Permissions::from_mode(0o666));
        }
        let mut tmp = b.tempfile_in(dir).map_err(io)?;
        tmp.write_all(bytes).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        staged.push((tmp, *path));
    }
    for (tmp, path) in staged {
        tmp.persist(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e.error })?;
    }
    Ok(())
}

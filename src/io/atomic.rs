use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// Whether writes are flushed to the device (fsync of each file and of its folder)
/// before they count as done. Off by default, like `onnx.save`, `torch.save` and `cp`:
/// the rename alone makes every write atomic for readers and for a crash of this
/// process; only an OS crash or power loss right after a write can lose it (some file
/// systems then show an empty file). `repfuse fuse --fsync` turns it on.
static FSYNC: AtomicBool = AtomicBool::new(false);

/// Sets whether writes are durable (see [`FSYNC`]).
pub fn set_fsync(on: bool) {
    FSYNC.store(on, Ordering::Relaxed);
}

/// Streams a file's content into a writer.
pub type Content<'a> = &'a dyn Fn(&mut dyn Write) -> Result<()>;

/// Writes `bytes` to `path` through a temp file in the same folder and a rename: the
/// target is either the old file or the complete new one, never a partial one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_many(&[(path, bytes)])
}

/// `write_atomic` for several files that belong together (a native graph and its
/// weights).
pub fn write_atomic_many(files: &[(&Path, &[u8])]) -> Result<()> {
    let writers: Vec<_> =
        files.iter().map(|&(p, b)| move |w: &mut dyn Write| w.write_all(b).map_err(|e| Error::Io { path: p.to_path_buf(), source: e })).collect();
    let streamed: Vec<(&Path, Content)> = files.iter().zip(&writers).map(|((p, _), w)| (*p, w as Content)).collect();
    write_atomic_streams(&streamed)
}

/// Writes files that belong together, each streamed by its [`Content`] into a temp
/// file in the target folder: every temp file is complete before any is renamed into
/// place, so a failure while writing leaves all targets as they were.
pub fn write_atomic_streams(files: &[(&Path, Content)]) -> Result<()> {
    // A rename onto a folder fails; find that before any file is replaced.
    for (path, _) in files {
        if path.is_dir() {
            return Err(Error::File { path: path.to_path_buf(), why: "is a folder; cannot write a model file there".into() });
        }
    }
    let fsync = FSYNC.load(Ordering::Relaxed);
    let mut staged = Vec::with_capacity(files.len());
    for (path, content) in files {
        let dir = folder(path);
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
        let tmp = b.tempfile_in(dir).map_err(io)?;
        {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
            content(&mut w)?;
            w.flush().map_err(io)?;
        }
        if fsync {
            tmp.as_file().sync_all().map_err(io)?;
        }
        staged.push((tmp, *path));
    }
    for (tmp, path) in staged {
        // A rename, also over an existing model. On ext4 (`auto_da_alloc`) that makes
        // the kernel start writing the new file back inside `rename` (~20 ms of a 60 ms
        // `repfuse fuse` of RepVGG-A0): kept on purpose, it is what lets a power loss
        // right after the write leave the old model or the new one, never an empty
        // file. Swapping the files (`renameat2(RENAME_EXCHANGE)`, session 12) skipped
        // that flush and so gave up exactly that (see end-to-end.md).
        tmp.persist(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e.error })?;
        if fsync {
            // The rename itself is durable once the folder is.
            std::fs::File::open(folder(path)).and_then(|d| d.sync_all()).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
        }
    }
    Ok(())
}

fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn replacing_a_file_puts_a_whole_new_one_in_place_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, b"old model").unwrap();
        // A reader that opened the old file keeps reading the old bytes: the new model
        // is another file put in its place, never the old one rewritten in place.
        let mut reader = std::fs::File::open(&path).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mut seen = vec![];
        std::io::Read::read_to_end(&mut reader, &mut seen).unwrap();
        assert_eq!(seen, b"old model");
        assert_eq!(names(dir.path()), ["m.onnx"]);
        write_atomic(&dir.path().join("n.onnx"), b"first").unwrap();
        assert_eq!(names(dir.path()), ["m.onnx", "n.onnx"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_link_is_replaced_as_rename_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let (real, link, hard) = (dir.path().join("real"), dir.path().join("link"), dir.path().join("hard"));
        std::fs::write(&real, b"kept").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        std::fs::hard_link(&real, &hard).unwrap();
        write_atomic(&link, b"new").unwrap();
        write_atomic(&hard, b"new too").unwrap();
        // The link names become plain files; the file they pointed at is untouched.
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(std::fs::read(&link).unwrap(), b"new");
        assert_eq!(std::fs::read(&hard).unwrap(), b"new too");
        assert_eq!(std::fs::read(&real).unwrap(), b"kept");
        assert_eq!(names(dir.path()), ["hard", "link", "real"]);
    }
}

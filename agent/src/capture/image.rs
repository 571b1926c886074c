//! Stage `image`: the SHA-256 of each executed file, read from userspace once per
//! `(dev, inode, size, mtime, ctime)` the kernel reported at exec, and cached by it.
//!
//! The file is reached without trusting a path: first through `/proc/<pid>/exe`, which is
//! the very file the process maps for as long as it lives; then, for a process already gone,
//! through its absolute exec path (not for a script, whose path names the script and not
//! the interpreter that ran), opened `O_PATH` and read only once `fstat` shows a regular
//! file. Either way the contents count only if the inode matches the kernel's tuple before
//! and after the read, so a file swapped or written since the exec is reported `changed`,
//! never hashed as if it were the one that ran. ctime is in the tuple because userspace can
//! set mtime back after an edit, but not ctime.

use std::{
    collections::HashMap,
    fs::{File, Metadata, OpenOptions},
    io::{self, Read as _},
    os::fd::AsRawFd as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::Path,
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};

use crate::capture::event::{Body, Event, ImageKey, Unhashed};

/// Files larger than this are not read, and are marked `too_large`: the stage runs inline
/// with capture, and reading a file this size costs tens of milliseconds on a loaded host.
pub const HASH_MAX_BYTES: i64 = 32 << 20;
/// Bytes read for digests in any one second. Past it, first executions are marked `busy`
/// until the next second: whoever runs many large new files (a build, say) cannot stall
/// capture for long, and a busy file is hashed at its next exec. At 128 MiB a second a
/// build running while an exec storm ran stalled capture long enough to lose execs in CI.
const READ_PER_SECOND: i64 = 32 << 20;
/// Digests kept; past it, an arbitrary one is dropped for each new one. A host runs far fewer
/// distinct executables than this, so misses are first executions.
const CACHED_MAX: usize = 8192;

type Digest = Result<[u8; 32], Unhashed>;

#[derive(Default)]
pub struct Images {
    cache: HashMap<ImageKey, Digest>,
    /// The second being budgeted, and the bytes read for digests in it.
    second: Option<Instant>,
    read: i64,
}

impl Images {
    /// Whether any event needs a file read (which blocks), so the caller can move off its
    /// async worker first.
    pub fn must_read(&self, events: &[Event]) -> bool {
        events.iter().any(|e| match &e.body {
            Body::Exec {
                image: Some(image), ..
            } => image.digest.is_none() && !self.cache.contains_key(&image.key),
            _ => false,
        })
    }

    /// Fills in the digest of every exec's image.
    pub fn process(&mut self, events: &mut [Event]) {
        for event in events {
            let Some(tgid) = event.process.as_ref().map(|p| p.tgid) else {
                continue;
            };
            let Body::Exec {
                filename,
                image: Some(image),
                ..
            } = &mut event.body
            else {
                continue;
            };
            if image.digest.is_some() {
                continue;
            }
            // An interpreter's file has no path on the record (`filename` is the script's).
            let path = if image.interpreter {
                ""
            } else {
                filename.as_str()
            };
            image.digest = Some(self.digest(tgid, path, image.key));
        }
    }

    fn digest(&mut self, tgid: u32, filename: &str, key: ImageKey) -> Digest {
        if let Some(digest) = self.cache.get(&key) {
            return *digest;
        }
        let digest = if key.size > HASH_MAX_BYTES {
            Err(Unhashed::TooLarge)
        } else if self.afford(key.size) {
            hash(tgid, filename, &key)
        } else {
            Err(Unhashed::Busy)
        };
        // A missing, changed or postponed file may be read at its next exec.
        if matches!(digest, Ok(_) | Err(Unhashed::TooLarge)) {
            self.remember(key, digest);
        }
        digest
    }

    /// Whether `size` more bytes fit this second's reading; one file always fits an unspent
    /// second.
    fn afford(&mut self, size: i64) -> bool {
        let now = Instant::now();
        if self
            .second
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1))
        {
            self.second = Some(now);
            self.read = 0;
        }
        if self.read > 0 && self.read.saturating_add(size) > READ_PER_SECOND {
            return false;
        }
        self.read = self.read.saturating_add(size.max(0));
        true
    }

    fn remember(&mut self, key: ImageKey, digest: Digest) {
        if self.cache.len() >= CACHED_MAX
            && let Some(old) = self.cache.keys().next().copied()
        {
            self.cache.remove(&old);
        }
        self.cache.insert(key, digest);
    }
}

fn hash(tgid: u32, filename: &str, key: &ImageKey) -> Digest {
    let by_pid = open_matching(File::open(format!("/proc/{tgid}/exe")), key);
    let file = match by_pid {
        Ok(file) => Ok(file),
        Err(first) if Path::new(filename).is_absolute() => {
            // Keep the stronger reason: a file found but not the one that ran.
            open_by_path(filename, key).map_err(|second| worse(first, second))
        }
        Err(first) => Err(first),
    }?;
    read_checked(file, key)
}

fn worse(a: Unhashed, b: Unhashed) -> Unhashed {
    let rank = |u| match u {
        Unhashed::Changed => 3,
        Unhashed::Unreadable => 2,
        Unhashed::Gone | Unhashed::TooLarge | Unhashed::Busy => 1,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// Opens `path` without reading it, and reopens it for reading only if it is a regular
/// file with the kernel's tuple: a path swapped for a FIFO or a device is never opened.
fn open_by_path(path: &str, key: &ImageKey) -> Result<File, Unhashed> {
    let handle = open_matching(
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(path),
        key,
    )?;
    open_matching(
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(format!("/proc/self/fd/{}", handle.as_raw_fd())),
        key,
    )
}

fn open_matching(opened: io::Result<File>, key: &ImageKey) -> Result<File, Unhashed> {
    let file = opened.map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Unhashed::Gone,
        _ => Unhashed::Unreadable,
    })?;
    let meta = file.metadata().map_err(|_| Unhashed::Unreadable)?;
    if matches(&meta, key) {
        Ok(file)
    } else {
        Err(Unhashed::Changed)
    }
}

fn matches(meta: &Metadata, key: &ImageKey) -> bool {
    let time = |sec: i64, nsec: i64| sec.saturating_mul(1_000_000_000).saturating_add(nsec);
    meta.file_type().is_file()
        && meta.dev() == key.dev
        && meta.ino() == key.inode
        && i64::try_from(meta.size()).is_ok_and(|size| size == key.size)
        && time(meta.mtime(), meta.mtime_nsec()) == key.mtime_ns
        && time(meta.ctime(), meta.ctime_nsec()) == key.ctime_ns
}

/// Hashes `file`, which must hold exactly `key.size` bytes and still match `key` after.
fn read_checked(mut file: File, key: &ImageKey) -> Digest {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total: i64 = 0;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(Unhashed::Unreadable),
        };
        sha.update(&buf[..n]);
        total = total.saturating_add(i64::try_from(n).unwrap_or(i64::MAX));
        if total > key.size {
            return Err(Unhashed::Changed);
        }
    }
    let after = file.metadata().map_err(|_| Unhashed::Unreadable)?;
    if total != key.size || !matches(&after, key) {
        return Err(Unhashed::Changed);
    }
    Ok(sha.finalize().into())
}

//! Stage `image`: the SHA-256 of each executed file, read once per `(dev, inode, size,
//! mtime, ctime)` the kernel reported at exec, and never on the capture path.
//!
//! The stage itself only looks up and opens. A digest already known goes on the exec at
//! once. A file not yet read is opened now, while its process most likely still runs, and
//! checked against the kernel's tuple; the open descriptor goes to a reader thread, the exec
//! says `pending`, and the digest follows as an event of its own (`image`), attributed to
//! the same process and chained like any other. It follows the exec, never overtakes it:
//! the reader sends a digest only once the stage has passed on the batch holding its exec
//! (`Images::passed_on`), so the attribute stage learns of a process from its fork and exec
//! before its digest. A digest read first once reached it ahead of the login's first fork,
//! and gave the whole session a root the table had never seen (pid of the digest's
//! process, start unknown). An earlier version read the files inline:
//! under a parallel build, new binaries at that rate stalled capture and the exec ring lost
//! records. Now reading is paced on its own thread, and when its queue is full the exec says
//! `busy` and the file is tried again at its next exec.
//!
//! The file is reached without trusting a path: through `/proc/<pid>/exe`, the file the
//! process maps; for a process already gone, through the path the kernel resolved for that
//! file (else the exec's own path, or for a script its interpreter's; never a path to a
//! file the kernel found deleted, nor a name relative to the caller such as an `fexecve`'s
//! `/dev/fd/N`, which would name some other file), opened `O_PATH`
//! and reopened for reading only once `fstat` shows a regular file. Either way the bytes
//! count only if the inode matches the kernel's tuple before and after the read, so a file
//! swapped or written since the exec is `changed`, never hashed as if it were the one that
//! ran. ctime is in the tuple because userspace can set mtime back after an edit, but not
//! ctime.

use std::{
    collections::{HashMap, HashSet},
    fs::{File, Metadata, OpenOptions},
    io::{self, Read as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    },
    path::Path,
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::{
    capture::event::{Body, Event, Image, ImageKey, Interpreter, Process, ResolvedPath, Unhashed},
    clock::boot_ns,
};

/// Files larger than this are not read, and are marked `too_large`.
const HASH_MAX_BYTES: i64 = 32 << 20;
/// Bytes the reader reads in any one second: it shares the host's disk and cores with
/// what the agent records.
const READ_PER_SECOND: i64 = 32 << 20;
/// Files waiting for the reader; past it, an exec of a new file says `busy`.
const QUEUED_MAX: usize = 32;
/// Digests kept; past it, an arbitrary one is dropped for each new one. A host runs far fewer
/// distinct executables than this, so misses are first executions.
const CACHED_MAX: usize = 8192;

type Digest = Result<[u8; 32], Unhashed>;

/// What the stage and the reader share: the digests known, the files being read, and how
/// many of the stage's batches it has passed on.
#[derive(Default)]
struct Known {
    digests: HashMap<ImageKey, Digest>,
    pending: HashSet<ImageKey>,
    passed: u64,
}

/// A file opened and checked by the stage, for the reader.
struct Job {
    file: File,
    image: Image,
    process: Option<Process>,
    /// The batch its exec is in, counted from 1: its digest waits until that batch is
    /// passed on.
    batch: u64,
}

/// The stage's half: owned by the decode stage. Dropping it ends the reader once it has
/// answered every file queued.
pub struct Images {
    known: Arc<Mutex<Known>>,
    /// Signalled when `Known::passed` moves, or the stage is closing.
    moved: Arc<Condvar>,
    jobs: SyncSender<Job>,
    closing: Arc<AtomicBool>,
    /// Batches looked at (`process` calls).
    batches: u64,
}

impl Drop for Images {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
        // Under the lock, so that a reader about to wait sees `closing` or the signal.
        let _known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        self.moved.notify_all();
    }
}

impl Images {
    /// Starts the reader thread; its `image` events go to `out`, the attribute stage's
    /// input.
    pub fn start(out: mpsc::Sender<Vec<Event>>) -> io::Result<Self> {
        let known = Arc::new(Mutex::new(Known::default()));
        let moved = Arc::new(Condvar::new());
        let closing = Arc::new(AtomicBool::new(false));
        let (jobs, queue) = sync_channel(QUEUED_MAX);
        let reader = Reader {
            known: Arc::clone(&known),
            moved: Arc::clone(&moved),
            closing: Arc::clone(&closing),
            second: None,
            read: 0,
        };
        std::thread::Builder::new()
            .name("image-reader".into())
            .spawn(move || reader.run(&queue, &out))?;
        Ok(Self {
            known,
            moved,
            jobs,
            closing,
            batches: 0,
        })
    }

    /// Gives every exec's image its digest, or says why it has none yet. The digests read
    /// for this batch are sent once it is passed on (`passed_on`).
    pub fn process(&mut self, events: &mut [Event]) {
        self.batches += 1;
        for event in events {
            let Body::Exec {
                filename,
                interpreter,
                executable,
                image: Some(image),
                ..
            } = &mut event.body
            else {
                continue;
            };
            let path = fallback_path(filename, executable.as_ref(), interpreter.as_ref(), image);
            image.digest = Some(self.look(*image, path, event.process.as_ref()));
        }
    }

    /// Every batch looked at so far has been passed on (or dropped with the stage's
    /// output): the digests of its execs may follow it.
    pub fn passed_on(&self) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        known.passed = self.batches;
        self.moved.notify_all();
    }

    /// `path` is the image's path as the exec named it, tried when the process is gone.
    fn look(&self, image: Image, path: &str, process: Option<&Process>) -> Digest {
        let key = image.key();
        {
            let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(digest) = known.digests.get(&key) {
                return *digest;
            }
            if key.2 > HASH_MAX_BYTES {
                remember(&mut known.digests, key, Err(Unhashed::TooLarge));
                return Err(Unhashed::TooLarge);
            }
            if known.pending.contains(&key) {
                return Err(Unhashed::Pending);
            }
        }
        let file = open(process.map(|p| p.tgid), path, &key)?;
        let job = Job {
            file,
            image,
            process: process.cloned(),
            batch: self.batches,
        };
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pending
            .insert(key);
        match self.jobs.try_send(job) {
            Ok(()) => Err(Unhashed::Pending),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.known
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pending
                    .remove(&key);
                Err(Unhashed::Busy)
            }
        }
    }
}

/// The path that reaches an image's file once its process is gone, or `""` for none: the
/// path the kernel resolved for the file, when it names it in full; else the exec's own,
/// for a script (whose image is its interpreter's file) the interpreter's.
///
/// None when the kernel found the file deleted or in no directory (a memfd): whatever a path
/// names now is another file, and reading it would answer `changed` for a file that is
/// `gone`. None either for a cut-off path, or for a name relative to the calling process
/// (`/dev/fd/3` is what an `fexecve` execs): opened here, it is the agent's own descriptor.
fn fallback_path<'a>(
    filename: &'a str,
    executable: Option<&'a ResolvedPath>,
    interpreter: Option<&'a Interpreter>,
    image: &Image,
) -> &'a str {
    const SELF_RELATIVE: [&str; 4] = ["/dev/fd/", "/dev/std", "/proc/self/", "/proc/thread-self/"];
    let path = match (executable, interpreter) {
        (Some(e), _) if e.deleted || e.unreachable => return "",
        (Some(e), _) if !e.truncated => return &e.path,
        _ if !image.interpreter => filename,
        (_, Some(i)) if !i.truncated => &i.path,
        _ => return "",
    };
    if SELF_RELATIVE.iter().any(|p| path.starts_with(p)) {
        ""
    } else {
        path
    }
}

fn remember(digests: &mut HashMap<ImageKey, Digest>, key: ImageKey, digest: Digest) {
    if digests.len() >= CACHED_MAX
        && let Some(old) = digests.keys().next().copied()
    {
        digests.remove(&old);
    }
    digests.insert(key, digest);
}

/// The reader thread: hashes each queued file, paced, and sends its digest as an event.
struct Reader {
    known: Arc<Mutex<Known>>,
    moved: Arc<Condvar>,
    closing: Arc<AtomicBool>,
    /// The second being paced, and the bytes read in it.
    second: Option<Instant>,
    read: i64,
}

impl Reader {
    fn run(mut self, queue: &Receiver<Job>, out: &mpsc::Sender<Vec<Event>>) {
        while let Ok(job) = queue.recv() {
            let key = job.image.key();
            // Once the agent stops, what is still queued is answered unread: every
            // `pending` exec gets its `image` event.
            let digest = if self.closing.load(Ordering::Relaxed) {
                Err(Unhashed::Busy)
            } else {
                self.pace(key.2);
                read_checked(job.file, &key)
            };
            {
                let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
                known.pending.remove(&key);
                // A changed or unreadable file may be read at its next exec.
                if digest.is_ok() {
                    remember(&mut known.digests, key, digest);
                }
                while known.passed < job.batch && !self.closing.load(Ordering::Relaxed) {
                    known = self
                        .moved
                        .wait(known)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
            let event = Event {
                ktime_ns: boot_ns(),
                process: job.process,
                body: Body::ImageDigest(Image {
                    digest: Some(digest),
                    ..job.image
                }),
            };
            if out.blocking_send(vec![event]).is_err() {
                return;
            }
        }
    }

    /// Waits, if need be, until `size` more bytes fit the second's reading; one file always
    /// fits an unspent second.
    fn pace(&mut self, size: i64) {
        let now = Instant::now();
        let second = *self.second.get_or_insert(now);
        let elapsed = now.duration_since(second);
        if elapsed >= Duration::from_secs(1) {
            self.second = Some(now);
            self.read = 0;
        } else if self.read > 0 && self.read.saturating_add(size) > READ_PER_SECOND {
            std::thread::sleep(Duration::from_secs(1).saturating_sub(elapsed));
            self.second = Some(Instant::now());
            self.read = 0;
        }
        self.read = self.read.saturating_add(size.max(0));
    }
}

/// Opens the file the exec mapped: through the process if it still runs, else by its
/// absolute path.
fn open(tgid: Option<u32>, path: &str, key: &ImageKey) -> Result<File, Unhashed> {
    let by_pid = match tgid {
        Some(tgid) => open_matching(File::open(format!("/proc/{tgid}/exe")), key),
        None => Err(Unhashed::Gone),
    };
    match by_pid {
        Ok(file) => Ok(file),
        // Keep the stronger reason: a file found but not the one that ran.
        Err(first) if Path::new(path).is_absolute() => {
            open_by_path(path, key).map_err(|second| worse(first, second))
        }
        Err(first) => Err(first),
    }
}

fn worse(a: Unhashed, b: Unhashed) -> Unhashed {
    let rank = |u| match u {
        Unhashed::Changed => 2,
        Unhashed::Unreadable => 1,
        _ => 0,
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
        && (meta.dev(), meta.ino()) == (key.0, key.1)
        && i64::try_from(meta.size()).is_ok_and(|size| size == key.2)
        && time(meta.mtime(), meta.mtime_nsec()) == key.3
        && time(meta.ctime(), meta.ctime_nsec()) == key.4
}

/// Hashes `file`, which must hold exactly the key's size and still match the key after.
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
        if total > key.2 {
            return Err(Unhashed::Changed);
        }
    }
    let after = file.metadata().map_err(|_| Unhashed::Unreadable)?;
    if total != key.2 || !matches(&after, key) {
        return Err(Unhashed::Changed);
    }
    Ok(sha.finalize().into())
}

/// Real files in the temporary directory: the checks that decide whether bytes are read,
/// and the reader's answers.
#[cfg(test)]
mod tests {
    use std::{ffi::CString, io::Write as _};

    use super::*;
    use crate::testing::Scratch;

    fn image_of(path: &Path) -> Image {
        let meta = std::fs::metadata(path).unwrap();
        let time = |sec: i64, nsec: i64| sec * 1_000_000_000 + nsec;
        Image {
            dev: meta.dev(),
            inode: meta.ino(),
            size: i64::try_from(meta.size()).unwrap(),
            mtime_ns: time(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: time(meta.ctime(), meta.ctime_nsec()),
            interpreter: false,
            digest: None,
        }
    }

    /// A successful exec of `filename`, by a process already gone.
    fn exec_of(filename: &str, executable: Option<ResolvedPath>, image: Image) -> Event {
        Event {
            ktime_ns: 0,
            process: None,
            body: Body::Exec {
                filename: filename.into(),
                filename_truncated: false,
                argv: Vec::new(),
                argv_truncated: false,
                argv_unreadable: false,
                result: 0,
                tried: Vec::new(),
                cwd: None,
                executable,
                interpreter: None,
                image: Some(image),
            },
        }
    }

    /// The digest the first event carries: an exec's, or the reader's own event's.
    fn digest_of(events: &[Event]) -> Option<Digest> {
        match &events[0].body {
            Body::Exec {
                image: Some(image), ..
            }
            | Body::ImageDigest(image) => image.digest,
            _ => None,
        }
    }

    fn sha(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    /// Bytes count only from the file the kernel named, as it was: a file grown since, or
    /// one whose inode no longer matches, is `changed`; a FIFO put at the path is never
    /// opened for reading (it would block); a missing or relative path is `gone`.
    #[test]
    fn a_file_is_read_only_if_it_is_the_one_the_kernel_named() {
        let dir = Scratch::new("image-checks");
        let path = dir.join("prog");
        std::fs::write(&path, b"abc").unwrap();
        let key = image_of(&path).key();
        let name = path.to_str().unwrap();
        let file = open(None, name, &key).unwrap();
        assert_eq!(read_checked(file, &key), Ok(sha(b"abc")));

        let file = open(None, name, &key).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"d")
            .unwrap();
        assert_eq!(read_checked(file, &key), Err(Unhashed::Changed));
        assert_eq!(open(None, name, &key).err(), Some(Unhashed::Changed));

        let fifo = dir.join("fifo");
        let c = CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let fifo_key = image_of(&fifo).key();
        assert_eq!(
            open(None, fifo.to_str().unwrap(), &fifo_key).err(),
            Some(Unhashed::Changed)
        );
        assert_eq!(
            open(None, dir.join("none").to_str().unwrap(), &key).err(),
            Some(Unhashed::Gone)
        );
        assert_eq!(open(None, "prog", &key).err(), Some(Unhashed::Gone));
    }

    /// A new file is `pending` and its digest comes as an event, once the batch of its exec
    /// is passed on and not before, even when the file has been read; the next exec of it
    /// carries the digest; one past the bound is `too_large` unread; once the stage is
    /// dropped, a file still queued is answered `busy`, and the reader ends.
    #[test]
    fn the_reader_answers_every_pending_file() {
        let dir = Scratch::new("image-reader");
        let path = dir.join("prog");
        std::fs::write(&path, b"#!\n").unwrap();
        let exec = |image: Image| exec_of(path.to_str().unwrap(), None, image);
        let (out, mut digests) = mpsc::channel(4);
        let mut images = Images::start(out).unwrap();
        let mut events = [exec(image_of(&path))];
        images.process(&mut events);
        assert_eq!(digest_of(&events), Some(Err(Unhashed::Pending)));
        // Read (no longer pending) but held: the reader waits for the batch to go first.
        let key = image_of(&path).key();
        while images.known.lock().unwrap().pending.contains(&key) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // A reader that did not wait would send within microseconds of the read.
        let until = Instant::now() + Duration::from_millis(100);
        while Instant::now() < until {
            assert!(digests.try_recv().is_err(), "a digest overtook its exec");
            std::thread::sleep(Duration::from_millis(1));
        }
        images.passed_on();
        let event = digests.blocking_recv().unwrap();
        assert_eq!(digest_of(&event), Some(Ok(sha(b"#!\n"))));

        let mut events = [exec(image_of(&path))];
        images.process(&mut events);
        assert_eq!(digest_of(&events), Some(Ok(sha(b"#!\n"))));

        let mut big = image_of(&path);
        big.size = HASH_MAX_BYTES + 1;
        let mut events = [exec(big)];
        images.process(&mut events);
        assert_eq!(digest_of(&events), Some(Err(Unhashed::TooLarge)));

        std::fs::write(&path, b"#!\n\n").unwrap();
        let mut events = [exec(image_of(&path))];
        images.closing.store(true, Ordering::Relaxed);
        images.process(&mut events);
        assert_eq!(digest_of(&events), Some(Err(Unhashed::Pending)));
        drop(images);
        let event = digests.blocking_recv().unwrap();
        assert_eq!(digest_of(&event), Some(Err(Unhashed::Busy)));
        assert!(digests.blocking_recv().is_none(), "the reader has ended");
    }

    /// A process gone before its file was opened leaves only paths, and two of them name
    /// some other file: an exec's `/dev/fd/N` (an `fexecve`), which here is the agent's own
    /// descriptor N, and a path the kernel found deleted, where a new file may stand now.
    /// Either is `gone`: reading it would say `changed`, as if the file that ran had been
    /// altered.
    #[test]
    fn a_path_that_names_another_file_now_is_never_read() {
        let dir = Scratch::new("image-elsewhere");
        let (prog, other) = (dir.join("prog"), dir.join("other"));
        std::fs::write(&prog, b"ran").unwrap();
        std::fs::write(&other, b"another file").unwrap();
        let image = image_of(&prog);
        let descriptor = File::open(&other).unwrap();
        let by_descriptor = format!("/dev/fd/{}", descriptor.as_raw_fd());
        let resolved = |deleted, truncated| ResolvedPath {
            path: prog.to_str().unwrap().into(),
            truncated,
            deleted,
            unreachable: false,
        };
        let exec = |filename: &str, executable| exec_of(filename, Some(executable), image);
        // What opening by those names would find: another file.
        assert_eq!(
            open(None, &by_descriptor, &image.key()).err(),
            Some(Unhashed::Changed)
        );
        let (out, _digests) = mpsc::channel(4);
        let mut images = Images::start(out).unwrap();
        // The executable's path cut off, so the exec's own name is all there is.
        let mut events = [exec(&by_descriptor, resolved(false, true))];
        images.process(&mut events);
        assert_eq!(digest_of(&events), Some(Err(Unhashed::Gone)));
        // Deleted, and another file put where it was.
        std::fs::rename(&other, &prog).unwrap();
        let mut events = [exec(prog.to_str().unwrap(), resolved(true, false))];
        images.process(&mut events);
        assert_eq!(digest_of(&events), Some(Err(Unhashed::Gone)));
    }
}

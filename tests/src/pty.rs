//! Real pseudo-terminals for tests and benchmarks.

use std::{
    fs::File,
    io::Read,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::process::CommandExt as _,
    },
    process::{Child, Command, Stdio},
    thread::JoinHandle,
};

/// Sets the window size of the terminal `fd` is open on (`TIOCSWINSZ`), as a terminal
/// emulator or sshd does through the master, or `stty` through the slave.
pub fn set_window(fd: RawFd, rows: u16, cols: u16) -> std::io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: a winsize the kernel only reads.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &raw const size) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub struct Pty {
    pub master: OwnedFd,
    /// Taken by whoever runs on the terminal; the master sees EOF once every copy is closed.
    pub slave: Option<OwnedFd>,
    /// N of `/dev/pts/N`: the slave is device 136:N.
    pub number: u32,
}

impl Pty {
    /// Opens a new pty pair in raw mode, so bytes pass through unchanged.
    #[must_use]
    pub fn open() -> Self {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: out-parameters are valid; name, termios and winsize may be null.
        let rc = unsafe {
            libc::openpty(
                &raw mut master,
                &raw mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: openpty returned two fresh descriptors that we now own.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut tio: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and termios.
        unsafe {
            libc::tcgetattr(slave.as_raw_fd(), &raw mut tio);
            libc::cfmakeraw(&raw mut tio);
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &raw const tio);
        }
        let mut number: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes an unsigned int.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &raw mut number) };
        assert_eq!(rc, 0, "TIOCGPTN: {}", std::io::Error::last_os_error());
        Self {
            master,
            slave: Some(slave),
            number,
        }
    }

    /// Opens a pty, runs `write` with its slave while the master is drained, and returns the
    /// pty once every byte has come through.
    #[must_use]
    pub fn written_by(write: impl FnOnce(&File)) -> Self {
        let mut pty = Self::open();
        let drain = pty.drain_master();
        let slave = File::from(pty.take_slave());
        write(&slave);
        drop(slave);
        drain.join().expect("drain thread");
        pty
    }

    /// Puts the terminal in the mode of a password prompt (lines, no echo: `getpass`, sudo)
    /// or back in raw mode (no echo either, as readline and editors run it). Set through the
    /// master, it applies to the slave's termios, so it works once the slave is taken.
    pub fn password_prompt(&self, on: bool) {
        let fd = self.master.as_raw_fd();
        let mut tio: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and termios.
        let rc = unsafe { libc::tcgetattr(fd, &raw mut tio) };
        assert_eq!(rc, 0, "tcgetattr: {}", std::io::Error::last_os_error());
        tio.c_lflag &= !libc::ECHO;
        if on {
            tio.c_lflag |= libc::ICANON;
        } else {
            tio.c_lflag &= !libc::ICANON;
        }
        // SAFETY: valid fd and termios.
        let rc = unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw const tio) };
        assert_eq!(rc, 0, "tcsetattr: {}", std::io::Error::last_os_error());
    }

    /// Runs `/bin/sh -c script` as a login's shell on this terminal: a new session whose
    /// controlling terminal, standard input and output are the slave, which it takes. Once the
    /// shell and its children exit, the slave is closed and a drain of the master ends.
    #[must_use]
    pub fn shell(&mut self, script: &str) -> Child {
        let slave = self.take_slave();
        let mut shell = Command::new("/bin/sh");
        shell
            .arg("-c")
            .arg(script)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()));
        in_new_session(&mut shell, slave.as_raw_fd());
        shell.spawn().expect("spawn a shell on the pty")
    }

    /// Takes this side's slave descriptor.
    #[must_use]
    pub fn take_slave(&mut self) -> OwnedFd {
        self.slave.take().expect("slave not taken yet")
    }

    /// The slave's device as the agent prints it.
    #[must_use]
    pub fn device(&self) -> String {
        format!("136:{}", self.number)
    }

    /// Reads and discards everything arriving on the master until every slave end is closed,
    /// so writers to the slave never block. Returns the byte count.
    #[must_use]
    pub fn drain_master(&self) -> JoinHandle<u64> {
        self.drain_master_up_to(u64::MAX)
    }

    /// As [`Self::drain_master`], but done once `limit` bytes came out. A writer that keeps
    /// its slave open until then loses none of them: when the last slave end closes, bytes
    /// still on their way through the pty can be dropped (seen once in 512 MiB).
    #[must_use]
    pub fn drain_master_up_to(&self, limit: u64) -> JoinHandle<u64> {
        let fd = self.master.try_clone().expect("dup master");
        std::thread::spawn(move || {
            let mut f = File::from(fd);
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            // EIO means the last slave descriptor closed.
            while total < limit
                && let Ok(n @ 1..) = f.read(&mut buf)
            {
                total += n as u64;
            }
            total
        })
    }
}

/// Makes `cmd` start a new session whose controlling terminal is `slave`, as a login does.
pub fn in_new_session(cmd: &mut Command, slave: RawFd) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(slave, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

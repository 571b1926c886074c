//! The process table: which image each live process runs, kept from fork/exec/exit and
//! seeded from /proc at start so processes older than the agent are known too.

use std::{collections::HashMap, fs};

use crate::event::{Body, Event};

#[derive(Default)]
pub struct ProcessTable {
    images: HashMap<u32, String>,
}

impl ProcessTable {
    /// Every process visible in /proc now, with the path of its executable where readable
    /// (kernel threads have none).
    #[must_use]
    pub fn from_proc() -> Self {
        let mut images = HashMap::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(exe) = fs::read_link(entry.path().join("exe")) {
                images.insert(pid, exe.to_string_lossy().into_owned());
            }
        }
        Self { images }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.images.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Updates the table from `event`, and fills in what the table knows that the kernel
    /// record does not carry (the image of an exiting process).
    pub fn observe(&mut self, event: &mut Event) {
        let Some(process) = &event.process else {
            return;
        };
        let tgid = process.tgid;
        match &mut event.body {
            Body::Fork => {
                if let Some(image) = self.images.get(&process.ppid).cloned() {
                    self.images.insert(tgid, image);
                }
            }
            Body::Exec {
                filename,
                result: 0,
                ..
            } => {
                self.images.insert(tgid, filename.clone());
            }
            Body::Exit { filename, .. } => *filename = self.images.remove(&tgid),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Process;

    fn event(tgid: u32, ppid: u32, body: Body) -> Event {
        let process = Process {
            pid: tgid,
            tgid,
            ppid,
            uid: 0,
            euid: 0,
            gid: 0,
            loginuid: None,
            sessionid: None,
            cgroup_id: 0,
            tty: None,
            comm: String::new(),
        };
        Event {
            ktime_ns: 0,
            process: Some(process),
            body,
        }
    }

    #[test]
    fn seeds_from_proc_including_this_process() {
        let table = ProcessTable::from_proc();
        assert!(table.images.contains_key(&std::process::id()));
    }

    #[test]
    fn fork_exec_exit_track_the_image() {
        let mut table = ProcessTable::default();
        table.images.insert(1, "/sbin/init".into());
        table.observe(&mut event(50, 1, Body::Fork));
        let exec = Body::Exec {
            filename: "/bin/sleep".into(),
            filename_truncated: false,
            argv: vec![],
            argv_truncated: false,
            argv_unreadable: false,
            result: 0,
        };
        table.observe(&mut event(50, 1, exec));
        let mut exit = event(
            50,
            1,
            Body::Exit {
                exit_code: 0,
                filename: None,
            },
        );
        table.observe(&mut exit);
        assert_eq!(
            exit.body,
            Body::Exit {
                exit_code: 0,
                filename: Some("/bin/sleep".into())
            }
        );
        assert!(!table.images.contains_key(&50));
    }
}

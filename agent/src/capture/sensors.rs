//! Sensor lifecycle: which programs each sensor needs, whether this kernel can run them,
//! loading and attaching them, and detaching them at the end. Every skip and failure is
//! reported with its reason. Enforcement is a sensor like the others, one that attaches on
//! demand: a `raw_syscalls` program costs every syscall on the host, and most hosts never
//! kill.

use std::{
    path::Path,
    sync::{Mutex, PoisonError},
};

use aya::{
    Ebpf,
    maps::Map,
    programs::{ProgramError, RawTracePoint, TracePoint, links::FdLink},
};
use tracing::{info, warn};

use super::platform::TRACEFS;

#[derive(Clone, Copy, Debug)]
enum Hook {
    /// A `syscalls/*` or other tracefs event, filtered by the kernel to this one event.
    TracePoint {
        category: &'static str,
        name: &'static str,
    },
    /// A raw tracepoint, given the tracepoint's own arguments (task pointers and the like).
    /// `category` only locates the event in tracefs, to tell whether this kernel has it.
    Raw {
        category: &'static str,
        name: &'static str,
    },
}

#[derive(Clone, Copy, Debug)]
struct Program {
    name: &'static str,
    hook: Hook,
}

/// When a sensor's programs attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attach {
    AtStart,
    /// Loaded at start, so a kernel that refuses it says so at once; attached by
    /// [`Programs::attach`].
    OnDemand,
}

pub struct Sensor {
    pub name: &'static str,
    programs: &'static [Program],
    attach: Attach,
}

const fn tp(name: &'static str, category: &'static str, event: &'static str) -> Program {
    Program {
        name,
        hook: Hook::TracePoint {
            category,
            name: event,
        },
    }
}

const fn raw(name: &'static str, category: &'static str, event: &'static str) -> Program {
    Program {
        name,
        hook: Hook::Raw {
            category,
            name: event,
        },
    }
}

/// Kills tasks of denied sessions and cgroups at their next syscall past their deadline
/// (`agent-ebpf/src/enforce.rs`), once the enforcer first denies one; its link is pinned.
pub const ENFORCE: Sensor = Sensor {
    name: "enforce",
    programs: &[raw("enforce_sys_enter", "raw_syscalls", "sys_enter")],
    attach: Attach::OnDemand,
};

const SENSORS: &[Sensor] = &[
    Sensor {
        name: "exec",
        programs: &[
            raw("exec_sched_process_exec", "sched", "sched_process_exec"),
            tp("exec_sys_enter_execve", "syscalls", "sys_enter_execve"),
            tp("exec_sys_enter_execveat", "syscalls", "sys_enter_execveat"),
            // The two syscalls' own exit events, not `raw_syscalls/sys_exit`: a raw program
            // runs on every syscall exit on the host (docs/capture.md).
            tp("exec_sys_exit_execve", "syscalls", "sys_exit_execve"),
            tp("exec_sys_exit_execveat", "syscalls", "sys_exit_execveat"),
        ],
        attach: Attach::AtStart,
    },
    Sensor {
        name: "task",
        programs: &[
            raw("task_sched_process_fork", "sched", "sched_process_fork"),
            raw("task_sched_process_exit", "sched", "sched_process_exit"),
        ],
        attach: Attach::AtStart,
    },
    Sensor {
        name: "tty",
        programs: &[
            tp("tty_sys_enter_write", "syscalls", "sys_enter_write"),
            tp("tty_sys_enter_writev", "syscalls", "sys_enter_writev"),
            tp("tty_sys_enter_pwritev2", "syscalls", "sys_enter_pwritev2"),
            tp(
                "tty_sys_enter_sendfile64",
                "syscalls",
                "sys_enter_sendfile64",
            ),
            tp("tty_sys_enter_splice", "syscalls", "sys_enter_splice"),
            tp("tty_sys_enter_ioctl", "syscalls", "sys_enter_ioctl"),
            raw("tty_io_uring_file_get", "io_uring", "io_uring_file_get"),
        ],
        attach: Attach::AtStart,
    },
    ENFORCE,
];

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("program {0} is missing from the embedded object")]
    Missing(&'static str),
    #[error("program {name} ({sensor} sensor) failed to load or attach: {source}")]
    Program {
        sensor: &'static str,
        name: &'static str,
        source: ProgramError,
    },
    #[error("the {0} sensor cannot run: {1}")]
    Unavailable(&'static str, String),
    #[error("the {0} sensor's link cannot be pinned: {1}")]
    Pin(&'static str, String),
}

/// What starting the sensors did.
#[derive(Debug, Default)]
pub struct Report {
    pub attached: Vec<&'static str>,
    pub skipped: Vec<(&'static str, String)>,
}

impl Program {
    /// Why this kernel cannot run the program, if it cannot: its hook is missing.
    fn cannot_run(&self) -> Option<String> {
        let (Hook::TracePoint {
            category,
            name: event,
        }
        | Hook::Raw {
            category,
            name: event,
        }) = self.hook;
        let dir = Path::new(TRACEFS).join("events").join(category).join(event);
        (!dir.exists()).then(|| format!("this kernel has no tracepoint {category}/{event}"))
    }
}

/// The loaded kernel programs and their maps, for as long as the agent runs: dropping it
/// detaches every program.
pub struct Programs {
    ebpf: Mutex<Ebpf>,
}

impl Programs {
    /// Loads every program this kernel can run and attaches those of the sensors that
    /// attach at start. A program whose hook this kernel lacks is skipped and reported; one
    /// that exists but fails to load or attach is an error, because running with a silent
    /// hole in capture is worse than not running.
    pub fn start(mut ebpf: Ebpf) -> Result<(Self, Report), SensorError> {
        let mut report = Report::default();
        for sensor in SENSORS {
            for program in sensor.programs {
                if let Some(reason) = program.cannot_run() {
                    warn!(sensor = sensor.name, program = program.name, %reason, "skipped");
                    report.skipped.push((program.name, reason));
                    continue;
                }
                load(&mut ebpf, sensor, program)?;
                if sensor.attach == Attach::AtStart {
                    attach(&mut ebpf, sensor, program)?;
                    report.attached.push(program.name);
                }
            }
        }
        Ok((
            Self {
                ebpf: Mutex::new(ebpf),
            },
            report,
        ))
    }

    /// Attaches an on-demand sensor of one raw tracepoint program, loaded by
    /// [`Programs::start`], through a link pinned at `pin`: it stays attached when this
    /// agent exits, until the link is unpinned (`agent --uninstall`).
    pub fn attach_pinned(&self, sensor: &Sensor, pin: &Path) -> Result<(), SensorError> {
        if let Some(reason) = sensor.programs.iter().find_map(Program::cannot_run) {
            return Err(SensorError::Unavailable(sensor.name, reason));
        }
        let [program] = sensor.programs else {
            return Err(SensorError::Unavailable(
                sensor.name,
                "only a sensor of one program can be pinned".into(),
            ));
        };
        let Hook::Raw { name, .. } = program.hook else {
            return Err(SensorError::Unavailable(
                sensor.name,
                "only a raw tracepoint is pinned".into(),
            ));
        };
        let mut ebpf = self.ebpf.lock().unwrap_or_else(PoisonError::into_inner);
        let prog: &mut RawTracePoint = ebpf
            .program_mut(program.name)
            .ok_or(SensorError::Missing(program.name))?
            .try_into()
            .map_err(wrap(sensor, program))?;
        let id = prog.attach(name).map_err(wrap(sensor, program))?;
        let link = FdLink::from(prog.take_link(id).map_err(wrap(sensor, program))?);
        link.pin(pin)
            .map_err(|e| SensorError::Pin(sensor.name, e.to_string()))?;
        info!(sensor = sensor.name, program = program.name, pin = %pin.display(), "attached, pinned");
        Ok(())
    }

    /// Takes a map out of the programs' object, for the one stage that owns it.
    pub fn take_map(&self, name: &str) -> Option<Map> {
        self.ebpf
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take_map(name)
    }
}

fn wrap(sensor: &Sensor, program: &Program) -> impl FnOnce(ProgramError) -> SensorError {
    let (sensor, name) = (sensor.name, program.name);
    move |source| SensorError::Program {
        sensor,
        name,
        source,
    }
}

fn load(ebpf: &mut Ebpf, sensor: &Sensor, program: &Program) -> Result<(), SensorError> {
    let prog = ebpf
        .program_mut(program.name)
        .ok_or(SensorError::Missing(program.name))?;
    match program.hook {
        Hook::TracePoint { .. } => {
            let prog: &mut TracePoint = prog.try_into().map_err(wrap(sensor, program))?;
            prog.load().map_err(wrap(sensor, program))
        }
        Hook::Raw { .. } => {
            let prog: &mut RawTracePoint = prog.try_into().map_err(wrap(sensor, program))?;
            prog.load().map_err(wrap(sensor, program))
        }
    }
}

fn attach(ebpf: &mut Ebpf, sensor: &Sensor, program: &Program) -> Result<(), SensorError> {
    let prog = ebpf
        .program_mut(program.name)
        .ok_or(SensorError::Missing(program.name))?;
    match program.hook {
        Hook::TracePoint { category, name } => {
            let prog: &mut TracePoint = prog.try_into().map_err(wrap(sensor, program))?;
            prog.attach(category, name).map_err(wrap(sensor, program))?;
        }
        Hook::Raw { name, .. } => {
            let prog: &mut RawTracePoint = prog.try_into().map_err(wrap(sensor, program))?;
            prog.attach(name).map_err(wrap(sensor, program))?;
        }
    }
    info!(sensor = sensor.name, program = program.name, "attached");
    Ok(())
}

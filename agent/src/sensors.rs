//! Sensor lifecycle: which programs each sensor needs, whether this kernel can run them, and
//! loading and attaching them. Every skip and failure is reported with its reason.

use std::path::Path;

use aya::{
    Ebpf,
    programs::{ProgramError, RawTracePoint, TracePoint},
};
use tracing::{info, warn};

use crate::platform::TRACEFS;

#[derive(Clone, Copy, Debug)]
pub enum Hook {
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
pub struct Program {
    pub name: &'static str,
    pub hook: Hook,
}

pub struct Sensor {
    pub name: &'static str,
    pub programs: &'static [Program],
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

pub const SENSORS: &[Sensor] = &[
    Sensor {
        name: "exec",
        programs: &[
            raw("exec_sched_process_exec", "sched", "sched_process_exec"),
            tp("exec_sys_enter_execve", "syscalls", "sys_enter_execve"),
            tp("exec_sys_enter_execveat", "syscalls", "sys_enter_execveat"),
            // Not syscalls/sys_exit_execve: any classic sys_exit_* event puts every syscall
            // exit on a slow path (measured: a 64-byte pty flood ran 41% slower instead of
            // 12%). The raw tracepoint costs one map lookup per exit.
            raw("exec_sys_exit", "raw_syscalls", "sys_exit"),
        ],
    },
    Sensor {
        name: "task",
        programs: &[
            raw("task_sched_process_fork", "sched", "sched_process_fork"),
            raw("task_sched_process_exit", "sched", "sched_process_exit"),
        ],
    },
    Sensor {
        name: "tty",
        programs: &[
            tp("tty_sys_enter_write", "syscalls", "sys_enter_write"),
            tp("tty_sys_enter_writev", "syscalls", "sys_enter_writev"),
        ],
    },
];

/// Kills tasks of denied sessions at their next syscall. Loaded at start, so a kernel that
/// refuses it says so at once, but attached only when something is first denied: a
/// `raw_syscalls` program costs every syscall on the host, and most hosts never kill.
pub const ENFORCE: Program = raw("enforce_sys_enter", "raw_syscalls", ENFORCE_EVENT);
const ENFORCE_EVENT: &str = "sys_enter";

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
}

#[derive(Debug, Default)]
pub struct Report {
    pub attached: Vec<&'static str>,
    pub skipped: Vec<(&'static str, String)>,
}

/// Why this kernel cannot run `program`, if it cannot.
fn cannot_run(program: &Program) -> Option<String> {
    let (Hook::TracePoint {
        category,
        name: event,
    }
    | Hook::Raw {
        category,
        name: event,
    }) = program.hook;
    let dir = Path::new(TRACEFS).join("events").join(category).join(event);
    (!dir.exists()).then(|| format!("this kernel has no tracepoint {category}/{event}"))
}

/// Loads [`ENFORCE`] without attaching it.
pub fn load_enforcement(ebpf: &mut Ebpf) -> Result<(), SensorError> {
    raw_program(ebpf, &ENFORCE)?.load().map_err(enforce_error)
}

/// Attaches [`ENFORCE`], loaded before.
pub fn attach_enforcement(ebpf: &mut Ebpf) -> Result<(), SensorError> {
    raw_program(ebpf, &ENFORCE)?
        .attach(ENFORCE_EVENT)
        .map(|_| info!(program = ENFORCE.name, "attached"))
        .map_err(enforce_error)
}

fn raw_program<'a>(
    ebpf: &'a mut Ebpf,
    program: &Program,
) -> Result<&'a mut RawTracePoint, SensorError> {
    ebpf.program_mut(program.name)
        .ok_or(SensorError::Missing(program.name))?
        .try_into()
        .map_err(enforce_error)
}

fn enforce_error(source: ProgramError) -> SensorError {
    SensorError::Program {
        sensor: "enforce",
        name: ENFORCE.name,
        source,
    }
}

/// Loads and attaches every program this kernel can run. A program the kernel lacks is
/// skipped and reported; one that exists but fails to load or attach is an error, because
/// running with a silent hole in capture is worse than not running.
pub fn attach_all(ebpf: &mut Ebpf) -> Result<Report, SensorError> {
    let mut report = Report::default();
    for sensor in SENSORS {
        for program in sensor.programs {
            if let Some(reason) = cannot_run(program) {
                warn!(sensor = sensor.name, program = program.name, %reason, "skipped");
                report.skipped.push((program.name, reason));
                continue;
            }
            let wrap = |source| SensorError::Program {
                sensor: sensor.name,
                name: program.name,
                source,
            };
            let prog = ebpf
                .program_mut(program.name)
                .ok_or(SensorError::Missing(program.name))?;
            match program.hook {
                Hook::TracePoint { category, name } => {
                    let prog: &mut TracePoint = prog.try_into().map_err(wrap)?;
                    prog.load().map_err(wrap)?;
                    prog.attach(category, name).map_err(wrap)?;
                }
                Hook::Raw { name, .. } => {
                    let prog: &mut RawTracePoint = prog.try_into().map_err(wrap)?;
                    prog.load().map_err(wrap)?;
                    prog.attach(name).map_err(wrap)?;
                }
            }
            info!(sensor = sensor.name, program = program.name, "attached");
            report.attached.push(program.name);
        }
    }
    Ok(report)
}

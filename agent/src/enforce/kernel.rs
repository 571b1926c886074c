//! The kernel side of enforcement: the deny maps the `enforce` sensor checks at every
//! syscall, and attaching that sensor at the first deny.

use std::sync::Arc;

use agent_common::enforce::{DENY_CGROUPS_MAP, DENY_SESSIONS_MAP, Deny};
use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, MapData};

use crate::capture::{
    event::Target,
    sensors::{ENFORCE, Programs},
};

pub struct Kernel {
    programs: Arc<Programs>,
    attached: bool,
    sessions: BpfHashMap<MapData, u32, Deny>,
    cgroups: BpfHashMap<MapData, u64, Deny>,
}

impl Kernel {
    /// Takes the deny maps from the loaded programs.
    pub fn new(programs: Arc<Programs>) -> anyhow::Result<Self> {
        let take = |name| {
            programs
                .take_map(name)
                .with_context(|| format!("map {name} is missing from the kernel programs"))
        };
        Ok(Self {
            sessions: BpfHashMap::try_from(take(DENY_SESSIONS_MAP)?)?,
            cgroups: BpfHashMap::try_from(take(DENY_CGROUPS_MAP)?)?,
            programs,
            attached: false,
        })
    }

    /// Denies `target`: the kernel kills its tasks at their next syscall, recording `cause`.
    pub fn deny(&mut self, target: Target, cause: u32) -> anyhow::Result<()> {
        let deny = Deny { cause };
        match target {
            Target::Session(id) => self.sessions.insert(id, deny, 0)?,
            Target::Cgroup(id) => self.cgroups.insert(id, deny, 0)?,
        }
        if !self.attached {
            self.programs.attach(&ENFORCE)?;
            self.attached = true;
        }
        Ok(())
    }
}

//! The kernel side of enforcement: the pinned deny maps the `enforce` sensor checks at
//! every syscall, and its pinned link, attached at the first deny. Everything here lives in
//! bpffs under one directory, so it outlives the agent: a restarted agent adopts the maps
//! (the loader reopens them by name) and the link (it finds the pin) instead of attaching
//! twice, and only `agent --uninstall` removes them.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use agent_common::enforce::{
    DENY_CGROUPS_MAP, DENY_SESSIONS_MAP, Deny, EXEMPT_AGENT, EXEMPT_MAP, KILLS_MAP,
};
use anyhow::Context as _;
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use tracing::info;

use crate::capture::{
    event::Target,
    sensors::{ENFORCE, Programs},
};

/// The pinned link's name in the pin directory.
const LINK_PIN: &str = "enforce_link";
/// Everything the agent pins, by name: `--uninstall` removes exactly these.
const PINNED: [&str; 5] = [
    LINK_PIN,
    DENY_SESSIONS_MAP,
    DENY_CGROUPS_MAP,
    EXEMPT_MAP,
    KILLS_MAP,
];

/// The directory in bpffs that holds the pinned maps and link. The layout version is part
/// of its name: a pinned map is reopened by name without its layout being checked, so an
/// agent whose [`Deny`] differs must not find the old maps.
#[must_use]
pub fn pin_dir(bpf_dir: &Path) -> PathBuf {
    bpf_dir.join("enforce-v2")
}

/// The deny maps, as any process (the agent, its reaper) opens them.
pub struct DenyMaps {
    pub sessions: BpfHashMap<MapData, u32, Deny>,
    pub cgroups: BpfHashMap<MapData, u64, Deny>,
    pub exempt: Array<MapData, u32>,
}

impl DenyMaps {
    /// Opens the maps pinned in `pins`.
    pub fn open_pinned(pins: &Path) -> anyhow::Result<Self> {
        let open = |name: &str| {
            MapData::from_pin(pins.join(name)).with_context(|| format!("opening pinned map {name}"))
        };
        Ok(Self {
            sessions: BpfHashMap::try_from(Map::LruHashMap(open(DENY_SESSIONS_MAP)?))?,
            cgroups: BpfHashMap::try_from(Map::LruHashMap(open(DENY_CGROUPS_MAP)?))?,
            exempt: Array::try_from(Map::Array(open(EXEMPT_MAP)?))?,
        })
    }

    /// Every entry: what it denies, and how.
    #[must_use]
    pub fn entries(&self) -> Vec<(Target, Deny)> {
        let sessions = self
            .sessions
            .iter()
            .flatten()
            .map(|(id, deny)| (Target::Session(id), deny));
        let cgroups = self
            .cgroups
            .iter()
            .flatten()
            .map(|(id, deny)| (Target::Cgroup(id), deny));
        sessions.chain(cgroups).collect()
    }

    /// The entry for `target`, if there is one.
    #[must_use]
    pub fn get(&self, target: Target) -> Option<Deny> {
        match target {
            Target::Session(id) => self.sessions.get(&id, 0).ok(),
            Target::Cgroup(id) => self.cgroups.get(&id, 0).ok(),
        }
    }

    pub fn insert(&mut self, target: Target, deny: Deny) -> anyhow::Result<()> {
        match target {
            Target::Session(id) => self.sessions.insert(id, deny, 0)?,
            Target::Cgroup(id) => self.cgroups.insert(id, deny, 0)?,
        }
        Ok(())
    }
}

pub struct Kernel {
    programs: Arc<Programs>,
    maps: DenyMaps,
    link: PathBuf,
    attached: bool,
}

impl Kernel {
    /// Takes the deny maps from the loaded programs (pinned in `pins`, created there or
    /// reopened), exempts this process from them, and adopts the pinned link if an earlier
    /// agent left one.
    pub fn new(programs: Arc<Programs>, pins: &Path) -> anyhow::Result<Self> {
        let take = |name| {
            programs
                .take_map(name)
                .with_context(|| format!("map {name} is missing from the kernel programs"))
        };
        let mut maps = DenyMaps {
            sessions: BpfHashMap::try_from(take(DENY_SESSIONS_MAP)?)?,
            cgroups: BpfHashMap::try_from(take(DENY_CGROUPS_MAP)?)?,
            exempt: Array::try_from(take(EXEMPT_MAP)?)?,
        };
        maps.exempt.set(EXEMPT_AGENT, std::process::id(), 0)?;
        let link = pins.join(LINK_PIN);
        let attached = link.exists();
        if attached {
            let entries = maps.entries().len();
            info!(pin = %link.display(), entries, "adopted the pinned enforcement program");
        }
        Ok(Self {
            programs,
            maps,
            link,
            attached,
        })
    }

    /// The entry the kernel holds for `target`, if any.
    #[must_use]
    pub fn get(&self, target: Target) -> Option<Deny> {
        self.maps.get(target)
    }

    /// Denies `target` from `deny.deadline_ns` on: the kernel kills its tasks at their
    /// first syscall past it, recording `deny.cause`, with or without this agent.
    pub fn deny(&mut self, target: Target, deny: Deny) -> anyhow::Result<()> {
        self.maps.insert(target, deny)?;
        if !self.attached {
            self.programs.attach_pinned(&ENFORCE, &self.link)?;
            self.attached = true;
        }
        Ok(())
    }
}

/// Removes everything the agent pinned: the enforcement program detaches and the deny maps
/// go. Returns what it removed.
pub fn uninstall(pins: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for name in PINNED {
        let path = pins.join(name);
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match fs::remove_dir(pins) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(removed),
    }
}

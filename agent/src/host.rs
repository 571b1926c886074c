//! Who this host is: the id its chains and grants name.

use anyhow::Context as _;

/// This host's stable id: systemd's machine id, else the host name.
#[must_use]
pub fn host_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown-host".into())
}

/// This boot's id: a restart of the agent within one boot and a reboot are told apart by
/// it.
pub fn boot_id() -> anyhow::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .context("reading the boot id")?
        .trim()
        .to_owned())
}

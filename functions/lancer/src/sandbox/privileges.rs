//! A sandboxed script holds no capability. As root it could otherwise read every tenant's
//! key off the loopback with a packet socket, load a kernel module, trace or signal any
//! process, or override file modes; in a user namespace of its own it could remount its
//! `/proc`. The step that starts the script drops every capability from every set, and
//! nothing it runs can win one back: the bounding set is empty and `no_new_privs` is set,
//! so neither a root `exec` nor a set-uid file grants any.
//!
//! The script keeps its uid. A root script still owns what root owns, so files stay
//! reachable as Landlock allows (an interpreter under `/root`, the tenant's lake folder
//! as earlier root tasks left it), but with no capability it reads nothing a mode bit
//! forbids to root's own uid, and it cannot reach another process's `/proc` files.

use caps::CapSet;

/// Drops every capability of this thread and of what it starts; an error says which step
/// failed, and the script must then not run.
pub fn drop_all() -> Result<(), String> {
    nix::sys::prctl::set_no_new_privs().map_err(|err| format!("no_new_privs: {err}"))?;
    // Only a holder of CAP_SETPCAP may shrink the bounding set; without it (a user that is
    // not root) nothing an exec could grant is there to drop.
    let bounding = caps::read(None, CapSet::Bounding).map_err(|err| err.to_string())?;
    if caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in bounding {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|err| format!("dropping {cap} from the bounding set: {err}"))?;
        }
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|err| format!("clearing {set:?}: {err}"))?;
    }
    let left = caps::read(None, CapSet::Permitted).map_err(|err| err.to_string())?;
    if !left.is_empty() {
        return Err(format!("capabilities left after dropping them: {left:?}"));
    }
    Ok(())
}

//! Whether a manager may leave the Raft membership (`node demote`, `node rm --force`): never
//! the last one, and never when the managers that remain could not form a quorum. Docker
//! refuses the same two cases; saying so up front beats a membership change that hangs.

use crate::consensus::ManagerInfo;

/// `Err` says, in words an operator can act on, why the manager with Raft id `raft_id`
/// (node `node`) must stay. `managers` is the membership as this manager sees it now.
pub fn check_manager_removal(
    managers: &[ManagerInfo],
    raft_id: u64,
    node: &str,
) -> Result<(), String> {
    if !managers.iter().any(|m| m.raft_id == raft_id) {
        return Ok(()); // not (or no longer) a member
    }
    if managers.len() == 1 {
        return Err(format!(
            "node {node} is the last manager of the cluster: promote another node first \
             (`shoal node promote NODE`)"
        ));
    }
    let reachable = managers.iter().filter(|m| m.reachable).count();
    if reachable * 2 <= managers.len() {
        return Err(format!(
            "only {reachable} of {} managers are reachable: the cluster has no quorum to \
             change its managers; bring the others back first",
            managers.len()
        ));
    }
    let remaining: Vec<&ManagerInfo> = managers.iter().filter(|m| m.raft_id != raft_id).collect();
    let remaining_reachable = remaining.iter().filter(|m| m.reachable).count();
    if remaining_reachable * 2 <= remaining.len() {
        return Err(format!(
            "removing node {node} from the managers would lose the quorum: {remaining_reachable} \
             of the {} remaining managers are reachable; bring the unreachable managers back \
             (or remove them) first",
            remaining.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn managers(reachable: &[bool]) -> Vec<ManagerInfo> {
        reachable
            .iter()
            .enumerate()
            .map(|(i, &reachable)| ManagerInfo {
                raft_id: i as u64 + 1,
                addr: format!("10.0.0.{i}:4242"),
                leader: i == 0,
                reachable,
            })
            .collect()
    }

    #[test]
    fn the_last_manager_stays() {
        let err = check_manager_removal(&managers(&[true]), 1, "n1").expect_err("last");
        assert!(err.contains("last manager"), "{err}");
    }

    #[test]
    fn a_change_that_would_lose_the_quorum_is_refused() {
        // Three managers, one down: removing a healthy one leaves 1 of 2 reachable.
        let err = check_manager_removal(&managers(&[true, true, false]), 2, "n2")
            .expect_err("quorum lost");
        assert!(err.contains("would lose the quorum"), "{err}");
        // Removing the one that is down is fine: 2 of 2 remain.
        check_manager_removal(&managers(&[true, true, false]), 3, "n3").expect("allowed");
        // Two managers, both up: one may go.
        check_manager_removal(&managers(&[true, true]), 2, "n2").expect("allowed");
        // Two managers, one down: no quorum at all now.
        let err = check_manager_removal(&managers(&[true, false]), 2, "n2").expect_err("no quorum");
        assert!(err.contains("no quorum"), "{err}");
    }

    #[test]
    fn a_node_outside_the_membership_needs_no_check() {
        check_manager_removal(&managers(&[true]), 9, "n9").expect("not a member");
    }
}

//! Small helpers on generated types that every crate needs: state ordering, display names.

use crate::v1::{NodeState, Task, TaskState};

impl TaskState {
    /// A terminal state: the task's container is gone or never will exist.
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    /// The lower-case name Docker prints (`running`, `shutdown`, ...).
    pub fn display(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }
}

impl Task {
    /// The name of the task's container, Swarm's `<service>.<slot>.<task id>`: the agent names
    /// the container so, and the manager gives it out as a DNS name on overlay networks.
    pub fn container_name(&self) -> String {
        let service = self
            .spec
            .as_ref()
            .map(|s| s.name.as_str())
            .unwrap_or("task");
        format!("{service}.{}.{}", self.slot, self.id)
    }
}

impl NodeState {
    pub fn display(self) -> &'static str {
        match self {
            NodeState::Unknown => "Unknown",
            NodeState::Down => "Down",
            NodeState::Ready => "Ready",
            NodeState::Disconnected => "Disconnected",
        }
    }
}

/// Unix time in milliseconds, the unit of every timestamp in the model.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_order_like_swarm() {
        assert!(TaskState::New < TaskState::Pending);
        assert!(TaskState::Running < TaskState::Complete);
        assert!(TaskState::Failed.is_terminal());
        assert!(!TaskState::Running.is_terminal());
    }
}

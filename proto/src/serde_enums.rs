//! JSON for enum fields: prost stores them as `i32`; people read `"running"`, not `7`.
//!
//! Each module here is used as `#[serde(with = ...)]` on one field kind (see build.rs). Output
//! is the lower-case value name without the enum's prefix (`TASK_STATE_RUNNING` → `running`);
//! input accepts that, the full proto name, or the number.

macro_rules! enum_serde {
    ($module:ident, $enum:ty, $prefix:literal) => {
        pub mod $module {
            use serde::{Deserialize, Deserializer, Serializer};

            pub fn serialize<S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
                match <$enum>::try_from(*value) {
                    Ok(e) => {
                        let name = e.as_str_name();
                        s.serialize_str(&name.trim_start_matches($prefix).to_ascii_lowercase())
                    }
                    Err(_) => s.serialize_i32(*value),
                }
            }

            #[derive(Deserialize)]
            #[serde(untagged)]
            enum Repr {
                Number(i32),
                Name(String),
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
                match Repr::deserialize(d)? {
                    Repr::Number(n) => Ok(n),
                    Repr::Name(name) => {
                        let upper = name.to_ascii_uppercase();
                        <$enum>::from_str_name(&upper)
                            .or_else(|| <$enum>::from_str_name(&format!("{}{upper}", $prefix)))
                            .map(|e| e as i32)
                            .ok_or_else(|| {
                                serde::de::Error::custom(format!("unknown value {name:?}"))
                            })
                    }
                }
            }
        }
    };
}

enum_serde!(task_state, crate::v1::TaskState, "TASK_STATE_");
enum_serde!(node_role, crate::v1::NodeRole, "NODE_ROLE_");
enum_serde!(
    node_availability,
    crate::v1::NodeAvailability,
    "NODE_AVAILABILITY_"
);
enum_serde!(node_state, crate::v1::NodeState, "NODE_STATE_");
enum_serde!(
    restart_condition,
    crate::v1::RestartCondition,
    "RESTART_CONDITION_"
);
enum_serde!(change_kind, crate::v1::ChangeKind, "CHANGE_KIND_");
enum_serde!(mount_type, crate::v1::MountType, "MOUNT_TYPE_");
enum_serde!(port_protocol, crate::v1::PortProtocol, "PORT_PROTOCOL_");
enum_serde!(publish_mode, crate::v1::PublishMode, "PUBLISH_MODE_");
enum_serde!(
    dependency_condition,
    crate::v1::DependencyCondition,
    "DEPENDENCY_CONDITION_"
);
enum_serde!(
    update_failure_action,
    crate::v1::UpdateFailureAction,
    "UPDATE_FAILURE_ACTION_"
);
enum_serde!(update_order, crate::v1::UpdateOrder, "UPDATE_ORDER_");
enum_serde!(update_state, crate::v1::UpdateState, "UPDATE_STATE_");
enum_serde!(secret_kind, crate::v1::SecretKind, "SECRET_KIND_");
enum_serde!(
    update_strategy,
    crate::v1::UpdateStrategy,
    "UPDATE_STRATEGY_"
);
enum_serde!(promote_mode, crate::v1::PromoteMode, "PROMOTE_MODE_");
enum_serde!(
    blue_green_phase,
    crate::v1::BlueGreenPhase,
    "BLUE_GREEN_PHASE_"
);

#[cfg(test)]
mod tests {
    use crate::v1::{Task, TaskState};

    #[test]
    fn enums_are_names_in_json() {
        let task = Task {
            desired_state: TaskState::Running as i32,
            ..Default::default()
        };
        let json = serde_json::to_value(&task).expect("serializes");
        assert_eq!(json["desired_state"], "running");
        let back: Task = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back.desired_state(), TaskState::Running);
        let numeric: Task =
            serde_json::from_str(r#"{"desired_state": 9}"#).expect("numbers are accepted");
        assert_eq!(numeric.desired_state(), TaskState::Shutdown);
    }
}

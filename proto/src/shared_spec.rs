//! [`SharedSpec`]: the spec a task carries, shared instead of copied.
//!
//! Every task holds the spec of its service as it was when the task was made (`Task.spec`), so
//! that an agent needs nothing else. A manager holds every task of the cluster in memory, and
//! all the tasks of one service version carry the same spec: as an inline `ServiceSpec` that
//! was ~1.4 KB (plus its strings) per task, most of a large cluster's state. A `SharedSpec` is
//! a reference-counted `ServiceSpec`: cloning a task clones a pointer, and the manager's store
//! keeps one spec per service version for all of its tasks. On the wire and on disk nothing
//! changes: it encodes exactly as the message it holds (the build script puts it in place of
//! the generated field's type).

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType};
use prost::DecodeError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::v1::ServiceSpec;

/// A `ServiceSpec` behind an `Arc`; reads through `Deref`, writes copy on write.
#[derive(Clone, Default, PartialEq)]
pub struct SharedSpec(Arc<ServiceSpec>);

impl SharedSpec {
    pub fn new(spec: ServiceSpec) -> SharedSpec {
        SharedSpec(Arc::new(spec))
    }

    /// Whether both point at the same allocation (equal specs need not).
    pub fn ptr_eq(a: &SharedSpec, b: &SharedSpec) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// How many holders share this spec.
    pub fn holders(this: &SharedSpec) -> usize {
        Arc::strong_count(&this.0)
    }

    /// The spec itself, copied only if someone else holds it too.
    pub fn into_inner(self) -> ServiceSpec {
        Arc::unwrap_or_clone(self.0)
    }
}

impl From<ServiceSpec> for SharedSpec {
    fn from(spec: ServiceSpec) -> Self {
        SharedSpec::new(spec)
    }
}

impl Deref for SharedSpec {
    type Target = ServiceSpec;
    fn deref(&self) -> &ServiceSpec {
        &self.0
    }
}

/// Copy on write: a change to one task's spec never shows in another task's.
impl DerefMut for SharedSpec {
    fn deref_mut(&mut self) -> &mut ServiceSpec {
        Arc::make_mut(&mut self.0)
    }
}

impl std::fmt::Debug for SharedSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Encoded as the `ServiceSpec` it holds, field for field.
impl prost::Message for SharedSpec {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.0.encode_raw(buf)
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        Arc::make_mut(&mut self.0).merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.encoded_len()
    }

    fn clear(&mut self) {
        *self = SharedSpec::default();
    }
}

impl Serialize for SharedSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ServiceSpec::deserialize(deserializer).map(SharedSpec::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{ContainerSpec, Task};
    use prost::Message;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            container: Some(ContainerSpec {
                image: "busybox".into(),
                args: vec!["sleep".into(), "1".into()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_task_encodes_its_spec_as_the_message_itself() {
        let task = Task {
            id: "t".into(),
            spec: Some(spec().into()),
            ..Default::default()
        };
        let bytes = task.encode_to_vec();
        // Field 6, length-delimited, then the spec's own bytes.
        let inner = spec().encode_to_vec();
        let mut expected = vec![0x0a, 1, b't', 0x32, inner.len() as u8];
        expected.extend(&inner);
        assert_eq!(bytes, expected);
        let back = Task::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(back, task);
        let json = serde_json::to_value(&task).expect("serializes");
        assert_eq!(json["spec"]["name"], "web");
        let back: Task = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, task);
    }

    #[test]
    fn clones_share_and_a_write_copies() {
        let a = SharedSpec::new(spec());
        let mut b = a.clone();
        assert!(SharedSpec::ptr_eq(&a, &b));
        b.name = "other".into();
        assert!(!SharedSpec::ptr_eq(&a, &b));
        assert_eq!(a.name, "web");
        assert_eq!(SharedSpec::holders(&a), 1);
    }
}

//! The byte encodings Raft uses: postcard for openraft's own types (compact and serde-driven,
//! so openraft's structs need no mirror), protobuf for shoal's model inside them.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, Error as _, SeqAccess, Visitor};
use serde::Serialize;

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(value)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Reads a protobuf message that serde saw as bytes (or, from a text format, a byte array).
pub(crate) struct ProtoVisitor<M>(PhantomData<M>);

impl<M> ProtoVisitor<M> {
    pub(crate) fn new() -> Self {
        ProtoVisitor(PhantomData)
    }
}

impl<'de, M: prost::Message + Default> Visitor<'de> for ProtoVisitor<M> {
    type Value = M;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("protobuf-encoded bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<M, E> {
        M::decode(v).map_err(|e| E::custom(format!("bad protobuf: {e}")))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<M, E> {
        self.visit_bytes(&v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<M, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        M::decode(bytes.as_slice()).map_err(|e| A::Error::custom(format!("bad protobuf: {e}")))
    }
}

/// A log entry's commands: a [`shoal_proto::StoreCommandBatch`], or a bare
/// [`shoal_proto::StoreCommand`] as entries were written before batching. (The batch uses
/// field 15 only, so a bare command decodes as an empty batch and is read again as one.)
#[derive(Default)]
pub(crate) struct CommandsOrOne(pub Vec<shoal_proto::StoreCommand>);

impl CommandsOrOne {
    fn decode(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        use prost::Message;
        let batch = shoal_proto::StoreCommandBatch::decode(bytes)?;
        if !batch.commands.is_empty() || bytes.is_empty() {
            return Ok(CommandsOrOne(batch.commands));
        }
        Ok(CommandsOrOne(vec![shoal_proto::StoreCommand::decode(
            bytes,
        )?]))
    }
}

impl<'de> Visitor<'de> for ProtoVisitor<CommandsOrOne> {
    type Value = CommandsOrOne;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("protobuf-encoded commands")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        CommandsOrOne::decode(v).map_err(|e| E::custom(format!("bad protobuf: {e}")))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
        self.visit_bytes(&v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        CommandsOrOne::decode(&bytes).map_err(|e| A::Error::custom(format!("bad protobuf: {e}")))
    }
}

//! Generated code for the `pgfleet.v1` gRPC API (prost messages, tonic clients and servers) plus its file descriptor set for reflection; nothing else.
//!
//! The source of truth is `proto/pgfleet/v1/*.proto` at the workspace root;
//! `build.rs` compiles it with protox, so no `protoc` is needed.

/// Package `pgfleet`.
pub mod pgfleet {
    /// Package `pgfleet.v1`: every pgfleet service and message.
    pub mod v1 {
        // Generated: oneofs hold their messages inline, so clippy flags the
        // stream event oneofs whose variants differ in size.
        #![allow(clippy::large_enum_variant)]
        tonic::include_proto!("pgfleet.v1");
    }
}

/// Encoded `google.protobuf.FileDescriptorSet` of the `pgfleet.v1` API (with
/// the well-known types it imports), for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pgfleet_v1_descriptor.bin"));

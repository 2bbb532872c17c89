//! Generates the Thespian client and server from `proto/thespian.proto`.
//!
//! The proto is parsed by `protox`, a pure-Rust protobuf compiler, so a build needs no system `protoc`.
//! The encoded descriptor set is kept too: the server's reflection service hands it to `grpcurl`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let proto = proto_dir.join("thespian.proto");
    println!("cargo:rerun-if-changed={}", proto.display());

    let fds = protox::compile([&proto], [&proto_dir])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("thespian_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Prost's codec with buffers sized for the empty messages (see `proto::Codec`).
        .codec_path("crate::proto::Codec")
        .compile_fds(fds)?;
    Ok(())
}

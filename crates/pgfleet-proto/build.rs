//! Compiles `proto/pgfleet/v1/*.proto` with protox (pure Rust, no `protoc`
//! needed), generates prost messages and tonic clients and servers, and
//! writes the encoded descriptor set for server reflection.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::{env, fs};

use prost::Message;

/// Name of the encoded `FileDescriptorSet` in `OUT_DIR`, read by `lib.rs`.
const DESCRIPTOR_FILE: &str = "pgfleet_v1_descriptor.bin";

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let api_dir = proto_root.join("pgfleet/v1");
    // A directory here makes cargo rescan everything below it.
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let files = proto_files(&api_dir)?;
    if files.is_empty() {
        return Err(format!("no .proto files in {}", api_dir.display()).into());
    }
    // Includes imports (the well-known types), which reflection needs to
    // resolve every type a pgfleet message refers to.
    let fds = protox::compile(&files, [&proto_root])?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join(DESCRIPTOR_FILE), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

/// The API's `.proto` files in a stable order, so the output never depends
/// on directory iteration order.
fn proto_files(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

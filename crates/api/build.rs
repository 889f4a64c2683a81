//! Generates the gRPC code for `kiln.v1` from proto/ with the vendored protoc, so that no
//! system protoc is needed, and writes the descriptor set that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "kiln/v1/api.proto",
        "kiln/v1/agent.proto",
        "kiln/v1/raft.proto",
        "kiln/v1/blobs.proto",
        "kiln/v1/tests.proto",
        "kiln/v1/gateway.proto",
    ];
    let paths: Vec<_> = files.iter().map(|f| root.join(f)).collect();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("kiln_descriptor.bin"))
        // So that `--json` output and tests can use the wire types directly.
        .type_attribute(
            ".kiln.v1",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .compile_protos(&paths, std::slice::from_ref(&root))?;
    for p in &paths {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    Ok(())
}

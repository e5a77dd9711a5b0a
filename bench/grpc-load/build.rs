//! The chorus client stubs from the node's own proto, compiled by protox (no system protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../api/proto/queue.proto");
    let descriptors = protox::compile(["queue.proto"], ["../../api/proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}

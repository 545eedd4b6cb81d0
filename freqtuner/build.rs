//! Compiles the kubelet gRPC protos in `proto/` with protox (a pure-Rust
//! protobuf compiler, so no `protoc` is needed) and generates the prost
//! messages and tonic clients and servers for `src/kubelet/`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/deviceplugin.proto", "proto/podresources.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Both sides of each service: the agent is a device-plugin server and
        // a Registration/PodResources client; the tests play the kubelet.
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

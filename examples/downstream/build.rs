//! rpath to libtorch and a real link to libtorch_cuda (see icpo-build).

fn main() {
    icpo_build::link_libtorch();
}

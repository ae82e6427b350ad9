//! Links libtorch for this crate's tests, examples and binaries (see icpo-build).

fn main() {
    icpo_build::link_libtorch();
}

//! Links libtorch for this crate's tests, examples and binaries (see icpo-build), and compiles
//! the fused CPU kernels of `csrc/fused.cpp`, the oneDNN shim of `csrc/onednn.cpp` and the
//! activation checkpointing of `csrc/recompute.cpp` against libtorch's headers (cfg
//! `icpo_fused`; without libtorch, as with the `doc-only` feature, the crate uses libtorch's
//! composed ops instead).

fn main() {
    icpo_build::link_libtorch();
    println!("cargo::rustc-check-cfg=cfg(icpo_fused)");
    for file in [
        "csrc/fused.cpp",
        "csrc/recompute.cpp",
        "csrc/onednn.cpp",
        "csrc/device_memory.cpp",
        "csrc/ffi.h",
        "csrc/kernels.cpp",
        "csrc/kernels.h",
    ] {
        println!("cargo:rerun-if-changed={file}");
    }
    let Some(mut build) = icpo_build::shim_build("ATen/ATen.h", "fused kernels not built") else {
        return;
    };
    let x86_64 = std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64");
    // The row kernels: once for the baseline, and on x86-64 once more with AVX2/FMA, picked at
    // run time (csrc/fused.cpp), so a binary runs on any CPU and is fast on recent ones.
    let mut variants = vec![("icpo_base", vec![])];
    if x86_64 {
        variants.push(("icpo_avx2", vec!["-mavx2", "-mfma"]));
    }
    for (ns, flags) in &variants {
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .file("csrc/kernels.cpp")
            .flag("-std=c++17")
            .flag("-fopenmp-simd")
            .flag("-fno-math-errno")
            .flag("-fno-trapping-math")
            .define("ICPO_NS", *ns)
            .opt_level(3)
            .warnings(false);
        for f in flags {
            build.flag(f);
        }
        build.compile(&format!("{ns}_kernels"));
    }
    build
        .file("csrc/fused.cpp")
        .file("csrc/recompute.cpp")
        .file("csrc/device_memory.cpp")
        .file("csrc/onednn.cpp");
    if x86_64 {
        build.define("ICPO_HAVE_AVX2", None);
    }
    build.compile("icpo_fused");
    println!("cargo:rustc-cfg=icpo_fused");
}

//! A downstream crate of `snnet` built with `default-features = false` plus one backend feature
//! (`flex`): it builds a [`StitchedNet`] and runs a route, with none of the application
//! (`snnet::workflow`, `snnet::plot`, `snnet::demo`, the dataset readers) compiled in.
//!
//! Built alone (`cargo test -p snnet-downstream`, which `.ci/run` does), snnet's features are this
//! crate's only; in `cargo test --workspace` they are unified with the binary's. The test below
//! also checks, through `cargo tree`, that the library's normal dependencies bring none of the
//! application's crates.

use snnet::{AnyAnchor, Description, Kernels, StitchedNet};

/// Two small ViTs (widths 16 and 24, four blocks, 16×16 images) stitched by the official DeiT
/// strategy, as a program would describe its own family.
pub fn small_family() -> Description {
    let vit = |width: usize, heads: usize| {
        format!(
            r#"{{"arch": "vit", "img_size": 16, "patch_size": 8, "embed_dim": {width}, "depth": 4, "num_heads": {heads}, "num_classes": 5}}"#
        )
    };
    let text = format!(r#"{{"anchors": [{}, {}]}}"#, vit(16, 2), vit(24, 3));
    Description::from_json(&text, "small family").expect("a valid description")
}

/// The stitched network of [`small_family`] on backend `B`.
pub fn build<B: Kernels>(device: &B::Device) -> snnet::anchors::Result<StitchedNet<B, AnyAnchor<B>>> {
    small_family().build(device)
}

#[cfg(test)]
mod tests {
    use burn::{backend::Flex, tensor::Tensor};

    #[test]
    fn a_program_builds_a_stitched_net_from_the_library_alone() {
        let device = Default::default();
        let net = super::build::<Flex>(&device).unwrap();
        assert!(net.num_routes() > 2, "two anchors and stitched routes between them");
        let images = Tensor::<Flex, 4>::zeros([2, 3, 16, 16], &device);
        for route in 0..net.num_routes() {
            assert_eq!(net.forward(images.clone(), route).unwrap().dims(), [2, 5], "route {route}");
        }
    }

    /// `cargo tree -p snnet --no-default-features --features flex -e normal --prune burn-core`
    /// (burn-core brings flate2 itself, with its `std` feature: pruned) names none of the
    /// application's crates.
    #[test]
    fn the_library_alone_brings_no_application_crates() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args(["tree", "-p", "snnet", "--no-default-features", "--features", "flex", "-e", "normal", "--prune", "burn-core"])
            .args(["--prefix", "none", "--offline"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo runs");
        let tree = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(tree.lines().any(|l| l.starts_with("snnet-core ")), "the engine is there:\n{tree}");
        let crates: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
        for app in ["indicatif", "plotters", "image", "flate2"] {
            assert!(!crates.contains(&app), "{app} in the library's dependencies:\n{tree}");
        }
    }
}

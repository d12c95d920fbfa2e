//! Arbitrary text through the description file: `Description::from_json`, then every anchor's
//! checks and limits, the stitch space and every route's costs — all that `snnet space` does,
//! without allocating a tensor.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: {
    // Keep each input quick: spaces up to 5,000 routes are enumerated, larger ones refused.
    std::env::set_var("SNNET_MAX_ROUTES", "5000");
}, |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(desc) = snnet_anchors::Description::from_json(text, "fuzz") else { return };
    if let Ok((space, costs)) = desc.space_with_costs() {
        assert_eq!(space.routes.len(), costs.len());
        assert!(space.routes.len() <= 5000);
        let _ = desc.to_json();
    }
});

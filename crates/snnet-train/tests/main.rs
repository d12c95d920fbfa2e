//! Datasets end to end: Fashion-MNIST IDX files (plain and gzipped) and ImageFolder trees, with the
//! errors that bad files give.

use std::{io::Write, path::PathBuf};

use snnet_train::data::{load_batch, DataError, Dataset, FashionMnist, ImageFolder, Preprocess, Split};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("snnet-train-tests-{}", std::process::id())).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn idx(magic_rank: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, magic_rank];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Three 2×2 images with pixel values i*10+j and labels 0, 9, 4.
fn write_split(dir: &PathBuf, prefix: &str, gz: bool) {
    let pixels: Vec<u8> = (0..3u8).flat_map(|i| (0..4u8).map(move |j| i * 10 + j)).collect();
    let files = [
        (format!("{prefix}-images-idx3-ubyte"), idx(3, &[3, 2, 2], &pixels)),
        (format!("{prefix}-labels-idx1-ubyte"), idx(1, &[3], &[0, 9, 4])),
    ];
    for (name, bytes) in files {
        if gz {
            std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

#[test]
fn fashion_mnist_reads_plain_and_gzipped_idx_files() {
    let dir = tmp("fmnist");
    write_split(&dir, "train", false);
    write_split(&dir, "t10k", true);
    for split in [Split::Train, Split::Test] {
        let ds = FashionMnist::load(&dir, split).unwrap();
        assert_eq!((ds.len(), ds.shape(), ds.num_classes()), (3, [1, 2, 2], 10));
        let s = ds.get(1).unwrap();
        assert_eq!(s.label, 9);
        let expected = (11.0 / 255.0 - 0.2860) / 0.3530;
        assert!((s.image[1] - expected).abs() < 1e-6);
    }
    let ds = FashionMnist::load(&dir, Split::Train).unwrap();
    assert!(matches!(ds.get(3), Err(DataError::OutOfRange { index: 3, len: 3 })));
    let batch = load_batch(&ds, &[2, 0, 7]);
    assert_eq!(batch.labels, vec![4, 0]);
    assert_eq!(batch.images.len(), 8);
    assert_eq!(batch.skipped.len(), 1);
}

#[test]
fn broken_idx_files_name_the_file_and_the_problem() {
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        ("magic", idx(2, &[3, 2], &[0; 6]), idx(1, &[3], &[0, 1, 2]), "magic 00 00 08 02"),
        ("short", idx(3, &[3, 2, 2], &[0; 11]), idx(1, &[3], &[0, 1, 2]), "12 bytes of data, the file holds 11"),
        ("header", vec![0, 0, 8], idx(1, &[3], &[0, 1, 2]), "shorter than the 16-byte header"),
        ("count", idx(3, &[3, 2, 2], &[0; 12]), idx(1, &[2], &[0, 1]), "holds 3 images but"),
        ("label", idx(3, &[3, 2, 2], &[0; 12]), idx(1, &[3], &[0, 10, 2]), "label 10 of sample 1"),
        ("gzip", gzip(&idx(3, &[3, 2, 2], &[0; 12]))[..20].to_vec(), idx(1, &[3], &[0, 1, 2]), "corrupt gzip stream"),
    ];
    for (name, images, labels, expected) in cases {
        let dir = tmp(&format!("bad-{name}"));
        let (i, l) = (dir.join("i"), dir.join("l"));
        std::fs::write(&i, images).unwrap();
        std::fs::write(&l, labels).unwrap();
        let err = FashionMnist::from_files(&i, &l).unwrap_err().to_string();
        assert!(err.contains(expected), "{name}: {err}");
    }
    let err = FashionMnist::load(&tmp("nothing"), Split::Test).unwrap_err().to_string();
    assert!(err.contains("neither t10k-images-idx3-ubyte nor t10k-images-idx3-ubyte.gz"), "{err}");
}

#[test]
fn image_folder_decodes_png_and_jpeg_and_skips_corrupt_files() {
    let root = tmp("folder");
    for (class, colour) in [("cat", [200u8, 30, 30]), ("dog", [30, 30, 200])] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        let img = image::RgbImage::from_pixel(40, 30, image::Rgb(colour));
        img.save(root.join(class).join("a.png")).unwrap();
        img.save(root.join(class).join("b.JPG")).unwrap();
    }
    std::fs::write(root.join("dog").join("broken.jpg"), b"not a jpeg at all").unwrap();
    std::fs::write(root.join("dog").join("notes.txt"), b"ignored").unwrap();
    let ds = ImageFolder::open(&root, Preprocess::imagenet(16)).unwrap();
    assert_eq!(ds.classes(), ["cat", "dog"]);
    assert_eq!((ds.len(), ds.shape(), ds.num_classes()), (5, [3, 16, 16], 2));
    let cat = ds.get(0).unwrap();
    assert_eq!(cat.label, 0);
    let red = (200.0 / 255.0 - 0.485) / 0.229;
    assert!((cat.image[0] - red).abs() < 0.02, "{}", cat.image[0]);
    let batch = load_batch(&ds, &(0..ds.len()).collect::<Vec<_>>());
    assert_eq!(batch.labels, vec![0, 0, 1, 1]);
    assert_eq!(batch.skipped.len(), 1);
    let (index, err) = &batch.skipped[0];
    assert_eq!(ds.sample_path(*index).unwrap().0.file_name().unwrap(), "broken.jpg");
    assert!(err.to_string().contains("broken.jpg") && err.to_string().contains("cannot decode"), "{err}");

    let empty = tmp("empty-folder");
    assert!(ImageFolder::open(&empty, Preprocess::imagenet(16)).unwrap_err().to_string().contains("no class sub-folders"));
    std::fs::create_dir_all(empty.join("only")).unwrap();
    assert!(ImageFolder::open(&empty, Preprocess::imagenet(16)).unwrap_err().to_string().contains("no .jpg/.jpeg/.png files"));
}

#[test]
fn image_folders_convert_to_the_networks_channels() {
    let root = tmp("gray-folder");
    std::fs::create_dir_all(root.join("shirt")).unwrap();
    image::GrayImage::from_pixel(28, 28, image::Luma([255])).save(root.join("shirt").join("white.png")).unwrap();
    image::RgbImage::from_pixel(40, 30, image::Rgb([0, 0, 0])).save(root.join("shirt").join("black.png")).unwrap();
    // One channel: the luminance, normalised as Fashion-MNIST, whatever the files hold.
    let gray = ImageFolder::open_for_input(&root, [1, 28, 28]).unwrap();
    assert_eq!(gray.shape(), [1, 28, 28]);
    let (black, white) = (gray.get(0).unwrap().image, gray.get(1).unwrap().image);
    assert_eq!((black.len(), white.len()), (28 * 28, 28 * 28));
    let fashion = |p: f32| (p / 255.0 - 0.2860) / 0.3530;
    assert!((white[0] - fashion(255.0)).abs() < 1e-3 && (black[0] - fashion(0.0)).abs() < 1e-3, "{} {}", white[0], black[0]);
    // Three channels: RGB with timm's preprocessing, grayscale files included.
    let rgb = ImageFolder::open_for_input(&root, [3, 16, 16]).unwrap();
    assert_eq!((rgb.shape(), rgb.get(1).unwrap().image.len()), ([3, 16, 16], 3 * 16 * 16));
    // Other channel counts get RGB images, for the caller to refuse by their shape.
    assert_eq!(ImageFolder::open_for_input(&root, [2, 16, 16]).unwrap().shape(), [3, 16, 16]);
}

#[test]
fn evaluation_preprocessing_matches_timm() {
    // tools/make_preprocess_fixture.py: timm 0.6.13's eval transform at 32 px (resize 36, crop 32).
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let bytes = std::fs::read(dir.join("preprocess_expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("expected").unwrap();
    assert_eq!(view.shape(), [3, 32, 32]);
    let expected: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let image = image::open(dir.join("preprocess.png")).unwrap().to_rgb8();
    let ours = Preprocess::imagenet(32).apply(&image);
    let worst = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let mean = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).sum::<f32>() / ours.len() as f32;
    eprintln!("preprocessing vs timm: max |diff| {worst:.4}, mean {mean:.5} (normalised units)");
    // One 8-bit level is 1/255/0.224 = 0.0175 in normalised units: at most two levels apart.
    assert!(worst < 0.036 && mean < 0.005, "max {worst}, mean {mean}");
}

#[test]
fn uniform_sampler_is_reproducible_resumable_and_uniform() {
    use snnet_train::{RouteSampler, UniformSampler};
    let mut a = UniformSampler::new(71, 7);
    let first: Vec<usize> = (0..1000).map(|_| a.next_route()).collect();
    let mut b = UniformSampler::new(71, 7);
    assert_eq!(first, (0..1000).map(|_| b.next_route()).collect::<Vec<_>>(), "same seed, same routes");
    // Resume from a saved state mid-way.
    let mut c = UniformSampler::new(71, 7);
    for _ in 0..400 {
        c.next_route();
    }
    let saved = c.state();
    let mut d = UniformSampler::new(71, 99);
    d.restore(saved);
    assert_eq!(first[400..], (0..600).map(|_| d.next_route()).collect::<Vec<_>>()[..]);
    // Every route appears, none far from 1/71 over many draws.
    let mut counts = vec![0usize; 71];
    let mut e = UniformSampler::new(71, 1);
    (0..71_000).for_each(|_| counts[e.next_route()] += 1);
    assert!(counts.iter().all(|&n| (800..1200).contains(&n)), "{counts:?}");
}

/// The trained configs of the official DeiT3-S/L two-way space with their official FLOPs, in id order.
fn deit3_s_l_flops() -> Vec<(usize, f64)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vectors/stitch_configs_deit3_s_l_v2.json");
    let vector: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let configs = vector["configs"].as_array().unwrap();
    configs
        .iter()
        .filter(|c| c.get("reported").is_some())
        .map(|c| (c["cfg_id"].as_u64().unwrap() as usize, c["reported"]["flops"].as_f64().unwrap()))
        .collect()
}

#[test]
fn flops_groups_are_the_official_ones_and_sampling_follows_them() {
    use snnet_train::{sampler::group_by_flops, FlopsGap, FlopsGroupedSampler, RouteSampler};
    let routes = deit3_s_l_flops();
    assert_eq!(routes.len(), 134, "config 13 is left out of training, hence of the FLOPs file");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/flops_groups_deit3_s_l.json");
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let want: Vec<Vec<usize>> = serde_json::from_value(fixture["groups"].clone()).unwrap();
    assert_eq!(group_by_flops(&routes, FlopsGap::Giga(1.0)).unwrap(), want);
    // The same gap as a fraction of the largest route (61.6 GFLOPs) gives the same groups.
    assert_eq!(group_by_flops(&routes, FlopsGap::Relative(1e9 / 61_604_135_936.0)).unwrap(), want);

    // The ramp k = 3: group probabilities as officially; draws follow them, never config 13.
    let mut sampler = FlopsGroupedSampler::new(&routes, FlopsGap::Giga(1.0), Some(3.0), 5).unwrap();
    let want_p: Vec<f64> = serde_json::from_value(fixture["ramp_probabilities"].clone()).unwrap();
    let p = sampler.group_probabilities();
    assert!(p.iter().zip(&want_p).all(|(a, b)| (a - b).abs() < 1e-12), "{p:?} vs {want_p:?}");
    let group_of: std::collections::HashMap<usize, usize> =
        want.iter().enumerate().flat_map(|(g, ids)| ids.iter().map(move |&id| (id, g))).collect();
    let draws = 60_000;
    let mut per_group = vec![0usize; want.len()];
    let first: Vec<usize> = (0..draws).map(|_| sampler.next_route()).collect();
    for id in &first {
        per_group[*group_of.get(id).unwrap_or_else(|| panic!("drew route {id}, not a trained one"))] += 1;
    }
    for (g, (&n, &pg)) in per_group.iter().zip(&want_p).enumerate() {
        let expected = pg * draws as f64;
        assert!((n as f64 - expected).abs() < 5.0 * expected.sqrt() + 5.0, "group {g}: {n} draws, expected {expected:.0}");
    }
    // Reproducible and resumable.
    let mut again = FlopsGroupedSampler::new(&routes, FlopsGap::Giga(1.0), Some(3.0), 5).unwrap();
    (0..100).for_each(|_| {
        again.next_route();
    });
    let mut resumed = FlopsGroupedSampler::new(&routes, FlopsGap::Giga(1.0), Some(3.0), 99).unwrap();
    resumed.restore(again.state());
    assert_eq!((0..500).map(|_| resumed.next_route()).collect::<Vec<_>>(), first[100..600]);

    // Uniform over groups without a ramp; tiny networks: one group under the official gap.
    let uniform = FlopsGroupedSampler::new(&routes, FlopsGap::Giga(1.0), None, 0).unwrap();
    assert!(uniform.group_probabilities().iter().all(|p| (p - 1.0 / 13.0).abs() < 1e-12));
    let tiny: Vec<(usize, f64)> = (0..10).map(|i| (i, 1e6 * (1 + i) as f64)).collect();
    assert_eq!(group_by_flops(&tiny, FlopsGap::Giga(1.0)).unwrap().len(), 1);
    assert_eq!(group_by_flops(&tiny, FlopsGap::Relative(0.25)).unwrap(), [vec![0, 1], vec![2, 3, 4], vec![5, 6, 7], vec![8, 9]]);

    // Bad settings are errors naming them.
    for (result, setting) in [
        (FlopsGroupedSampler::new(&[], FlopsGap::Giga(1.0), None, 0), "routes"),
        (FlopsGroupedSampler::new(&[(0, f64::NAN)], FlopsGap::Giga(1.0), None, 0), "routes"),
        (FlopsGroupedSampler::new(&routes, FlopsGap::Giga(-1.0), None, 0), "flops_gap"),
        (FlopsGroupedSampler::new(&routes, FlopsGap::Giga(1.0), Some(0.0), 0), "flops_sampling_k"),
    ] {
        let err = result.unwrap_err().to_string();
        assert!(err.contains(setting), "{err}");
    }
}

#[test]
fn cosine_schedule_follows_timm_and_the_official_stepping() {
    use snnet_train::CosineSchedule;
    // DeiT recipe: base 1e-4, warmup 1e-7 for 5 epochs, min 1e-6, 50 epochs, no prefix.
    let s = CosineSchedule { base_lr: 1e-4, warmup_lr: 1e-7, min_lr: 1e-6, warmup_t: 5.0, t_initial: 50.0, warmup_prefix: false };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 + 1e-9 * b.abs();
    assert!(close(s.lr_at(0.0), 1e-7));
    assert!(close(s.lr_at(2.0), 1e-7 + 2.0 * (1e-4 - 1e-7) / 5.0));
    // After warmup without prefix the cosine is evaluated at t itself.
    let at = |t: f64| 1e-6 + 0.5 * (1e-4 - 1e-6) * (1.0 + (std::f64::consts::PI * t / 50.0).cos());
    assert!(close(s.lr_at(5.0), at(5.0)) && close(s.lr_at(49.0), at(49.0)));
    assert!(close(s.lr_at(50.0), 1e-6) && close(s.lr_at(80.0), 1e-6));
    // DeiT stepping: epochs 0 and 1 at the warmup rate, epoch e at f(e - 1).
    assert!(close(s.deit_epoch_lr(0), 1e-7) && close(s.deit_epoch_lr(1), 1e-7));
    assert!(close(s.deit_epoch_lr(7), s.lr_at(6.0)));
    // Swin: prefix, per step.
    let w = CosineSchedule { warmup_prefix: true, warmup_t: 10.0, t_initial: 90.0, ..s.clone() };
    assert!(close(w.lr_at(10.0), 1e-4) && close(w.lr_at(100.0), 1e-6));
    assert!(close(w.swin_step_lr(0), 1e-7) && close(w.swin_step_lr(11), w.lr_at(10.0)));
}

/// `len` deterministic 3×16×16 images in 5 classes (label = index mod 5, shifted by the label so
/// they can be learnt); sample `broken` cannot be read.
struct Synthetic {
    len: usize,
    broken: Option<usize>,
}

impl Dataset for Synthetic {
    fn len(&self) -> usize {
        self.len
    }
    fn shape(&self) -> [usize; 3] {
        [3, 16, 16]
    }
    fn num_classes(&self) -> usize {
        5
    }
    fn get(&self, index: usize) -> Result<snnet_train::Sample, DataError> {
        if Some(index) == self.broken {
            return Err(DataError::Mismatch(format!("sample {index} is broken on purpose")));
        }
        let label = index % 5;
        let image = (0..768).map(|i| (((i * 13 + index * 71) % 89) as f32 / 44.0) - 1.0 + label as f32 * 0.3).collect();
        Ok(snnet_train::Sample { image, label })
    }
}

mod training {
    use std::collections::BTreeMap;

    use burn::{
        backend::{Autodiff, Flex},
        tensor::{backend::Backend, Distribution, Int, Tensor},
    };
    use snnet_anchors::{AnchorSpec, Architecture, Description, VitConfig};
    use snnet_train::{train_step, AdamW, AdamWConfig, Distillation, StepConfig};

    type B = Autodiff<Flex>;

    fn family() -> Description {
        let vit = |d, h| VitConfig { img_size: 16, patch_size: 8, num_classes: 5, ..VitConfig::new(d, 3, h) };
        let anchors = [(8, 2), (12, 3)].map(|(d, h)| AnchorSpec::Explicit(Architecture::Vit(vit(d, h)))).to_vec();
        Description { anchors, space: Default::default(), behaviour: Default::default() }
    }

    fn params(net: &snnet_core::StitchedNet<B, snnet_anchors::AnyAnchor<B>>) -> BTreeMap<String, Vec<f32>> {
        net.named_tensors().into_iter().map(|(k, t)| (k, t.data)).collect()
    }

    /// Keys of parameters a route runs: the front anchor's stem, the blocks of each segment, the
    /// stitching layers, the end anchor's head (and its final norm only for plain anchors).
    fn used_by(net: &snnet_core::StitchedNet<B, snnet_anchors::AnyAnchor<B>>, id: usize, key: &str) -> bool {
        let route = net.route(id).unwrap();
        let first = route.segments[0].anchor;
        let last = route.segments.last().unwrap().anchor;
        let stem = ["patch_embed.", "cls_token", "pos_embed"].iter().any(|p| key.starts_with(&format!("anchors.{first}.{p}")));
        let blocks = route.segments.iter().any(|s| s.blocks.clone().any(|b| key.starts_with(&format!("anchors.{}.blocks.{b}.", s.anchor))));
        let head = key.starts_with(&format!("anchors.{last}.head."));
        let norm = route.is_anchor() && key.starts_with(&format!("anchors.{last}.norm."));
        let stitch = route.slots.iter().any(|&s| key.starts_with(&format!("{}.", net.space().layers[s].key())));
        stem || blocks || head || norm || stitch
    }

    fn step_changes(
        anchor_lr_scale: f64,
        route: usize,
        distill: bool,
    ) -> (Vec<String>, snnet_core::StitchedNet<B, snnet_anchors::AnyAnchor<B>>) {
        let device = Default::default();
        B::seed(&device, 3);
        let net = family().build::<B>(&device).unwrap();
        let before = params(&net);
        let images = Tensor::<B, 4>::random([4, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let labels = Tensor::<B, 1, Int>::from_ints([0, 1, 2, 3], &device);
        let teacher = distill.then(|| {
            (Tensor::<B, 2>::random([4, 5], Distribution::Normal(0.0, 1.0), &device), Distillation::Soft { alpha: 0.5, tau: 2.0 })
        });
        let mut optimizer = AdamW::<B>::new(AdamWConfig { clip_grad_norm: Some(1.0), ..Default::default() });
        let config = StepConfig { anchor_lr_scale, ..Default::default() };
        let (net, outcome) = train_step(net, &mut optimizer, images, labels, teacher, route, 1e-2, &config).unwrap();
        assert!(outcome.loss.value().is_finite() && outcome.optimizer.grad_norm.value() > 0.0);
        let after = params(&net);
        let changed = before.keys().filter(|k| before[*k] != after[*k]).cloned().collect();
        (changed, net)
    }

    #[test]
    fn a_step_changes_only_the_parameters_of_the_sampled_route() {
        let device = Default::default();
        let net = family().build::<B>(&device).unwrap();
        let stitched = (0..net.num_routes()).find(|&i| !net.route(i).unwrap().is_anchor()).unwrap();
        for (route, distill) in [(0, false), (1, true), (stitched, false), (net.num_routes() - 1, true)] {
            let (changed, net) = step_changes(1.0, route, distill);
            assert!(!changed.is_empty());
            for key in &changed {
                assert!(used_by(&net, route, key), "route {route}: {key} changed but is not on the route");
            }
            assert!(changed.iter().any(|k| k.contains(".head.")), "route {route}: the head trains");
            if !net.route(route).unwrap().is_anchor() {
                assert!(changed.iter().any(|k| k.starts_with("stitch_layers.")), "route {route}: its stitching layer trains");
                assert!(!changed.iter().any(|k| k.ends_with(".norm.weight") && !k.contains("blocks")), "no final norm on stitched routes");
            }
        }
    }

    /// What each peer of a one-step exchange ended with: weights, loss, gradient norm, parameters
    /// updated.
    type PeerStep = (BTreeMap<String, Vec<f32>>, f64, f64, usize);

    /// One step by two in-process peers through burn's collective: peer `r` trains `routes[r]` on
    /// images `shards[r]` of `images`.
    fn two_peer_step(
        start: &snnet_core::StitchedNet<B, snnet_anchors::AnyAnchor<B>>,
        images: &Tensor<B, 4>,
        labels: &Tensor<B, 1, Int>,
        routes: [usize; 2],
        shards: [(usize, usize); 2],
    ) -> Vec<PeerStep> {
        use snnet_train::{apply_gradients, fresh_leaves, peers, replica, route_gradients, RouteBatch};
        let _only_run = peers::exclusive_run();
        peers::reset_collective::<B>();
        let board = peers::Board::new(2, std::time::Duration::from_secs(60), peers::reset_collective::<B>, None);
        let config = StepConfig::default();
        let results = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|rank| {
                    let (board, net) = (board.clone(), if rank == 0 { fresh_leaves(start) } else { replica(start) });
                    let config = &config;
                    scope.spawn(move || {
                        let peer = peers::Peer::<B>::join(rank, 2, None, board, Default::default(), &net).unwrap();
                        let (from, len) = shards[rank];
                        let batch = RouteBatch {
                            images: images.clone().narrow(0, from, len),
                            labels: labels.clone().narrow(0, from, len),
                            teacher_logits: None,
                            route: routes[rank],
                            noise_seed: None,
                        };
                        let part = route_gradients(&fresh_leaves(&net), batch, config).unwrap();
                        let local = peers::LocalPart { images: len, skipped: 0, result: Some(part) };
                        let all = peer.exchange(0, local).unwrap();
                        assert_eq!(all.images, shards[0].1 + shards[1].1);
                        let (loss, grads) = all.result.unwrap();
                        let (net, report) = apply_gradients(net, &mut adamw(), &grads, 1e-2, config);
                        peer.leave();
                        (params(&net), loss.value(), report.grad_norm.value(), report.updated)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        peers::reset_collective::<B>();
        results
    }

    fn adamw() -> AdamW<B> {
        AdamW::<B>::new(AdamWConfig { clip_grad_norm: Some(1.0), ..Default::default() })
    }

    /// `(a, b)` agree within `tol` relative to `a`'s magnitude (at least 1).
    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * a.abs().max(1.0)
    }

    fn assert_same_weights(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) {
        for (key, va) in a {
            let diff = va.iter().zip(&b[key]).fold(0f32, |m, (x, y)| m.max((x - y).abs() / x.abs().max(1.0)));
            assert!(diff < 1e-4, "{key}: relative difference {diff}");
        }
    }

    #[test]
    fn two_peers_sharing_a_route_make_the_step_one_device_makes_on_the_whole_batch() {
        let device = Default::default();
        B::seed(&device, 5);
        let start = family().build::<B>(&device).unwrap();
        let images = Tensor::<B, 4>::random([5, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let labels = Tensor::<B, 1, Int>::from_ints([0, 1, 2, 3, 4], &device);
        let stitched = (0..start.num_routes()).find(|&i| !start.route(i).unwrap().is_anchor()).unwrap();
        let config = StepConfig::default();
        let (one, one_outcome) =
            train_step(start.clone(), &mut adamw(), images.clone(), labels.clone(), None, stitched, 1e-2, &config).unwrap();
        let (one, one_loss, one_norm) = (params(&one), one_outcome.loss.value(), one_outcome.optimizer.grad_norm.value());
        // 3 + 2 images: each peer's gradient counts with its share of the batch.
        let peers = two_peer_step(&start, &images, &labels, [stitched; 2], [(0, 3), (3, 2)]);
        for (weights, loss, norm, updated) in &peers {
            assert!(close(one_loss, *loss, 1e-5), "loss {one_loss} vs {loss}");
            assert!(close(one_norm, *norm, 1e-4), "gradient norm {one_norm} vs {norm}");
            assert_eq!(*updated, one_outcome.optimizer.updated);
            assert_same_weights(&one, weights);
        }
        assert_eq!(peers[0].0, peers[1].0, "the peers' copies are identical");
    }

    #[test]
    fn two_peers_on_their_own_routes_step_with_the_mean_of_their_gradients_computed_apart() {
        use snnet_train::{apply_gradients, fresh_leaves, optim::Grads, route_gradients, RouteBatch};
        let device = Default::default();
        B::seed(&device, 7);
        let start = family().build::<B>(&device).unwrap();
        let images = Tensor::<B, 4>::random([6, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let labels = Tensor::<B, 1, Int>::from_ints([0, 1, 2, 3, 4, 0], &device);
        let stitched = (0..start.num_routes()).find(|&i| !start.route(i).unwrap().is_anchor()).unwrap();
        let routes = [0, stitched];
        let shards = [(0, 4), (4, 2)];
        let peers = two_peer_step(&start, &images, &labels, routes, shards);

        // Apart: each route's gradients on its shard, weighted 4/6 and 2/6, summed by parameter.
        let config = StepConfig::default();
        let mut sum: std::collections::HashMap<burn::module::ParamId, Tensor<Flex, 1>> = Default::default();
        let mut loss = 0.0;
        let ids = {
            use burn::module::{Module, ModuleVisitor, Param};
            struct Ids(Vec<burn::module::ParamId>);
            impl ModuleVisitor<B> for Ids {
                fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                    self.0.push(param.id);
                }
            }
            let mut ids = Ids(Vec::new());
            start.visit(&mut ids);
            ids.0
        };
        for (route, (from, len)) in routes.into_iter().zip(shards) {
            let batch = RouteBatch {
                images: images.clone().narrow(0, from, len),
                labels: labels.clone().narrow(0, from, len),
                teacher_logits: None,
                route,
                noise_seed: None,
            };
            let (part_loss, grads) = route_gradients(&fresh_leaves(&start), batch, &config).unwrap();
            let share = len as f64 / 6.0;
            loss += share * part_loss.value();
            for id in &ids {
                if let Some(g) = grads.get(id) {
                    let g = g.clone().mul_scalar(share);
                    let total = match sum.remove(id) {
                        Some(s) => s + g,
                        None => g,
                    };
                    sum.insert(*id, total);
                }
            }
        }
        let (apart, report) = apply_gradients(start.clone(), &mut adamw(), &Grads::from_flat(sum), 1e-2, &config);
        let apart = params(&apart);
        for (weights, peer_loss, norm, updated) in &peers {
            assert!(close(loss, *peer_loss, 1e-5), "loss {loss} vs {peer_loss}");
            assert!(close(report.grad_norm.value(), *norm, 1e-4));
            assert_eq!(*updated, report.updated, "the parameters of both routes are updated");
            assert_same_weights(&apart, weights);
        }
        let (one_route, _) = apply_gradients(
            start.clone(),
            &mut adamw(),
            &route_gradients(
                &fresh_leaves(&start),
                RouteBatch { images: images.clone(), labels: labels.clone(), teacher_logits: None, route: 0, noise_seed: None },
                &config,
            )
            .unwrap()
            .1,
            1e-2,
            &config,
        );
        assert_ne!(params(&one_route), peers[0].0, "two routes step differently from one");
    }

    #[test]
    fn a_peer_that_never_joins_or_fails_stops_the_others_with_an_error_that_names_it() {
        use snnet_train::peers;
        let device = Default::default();
        let net = family().build::<B>(&device).unwrap();
        let _only_run = peers::exclusive_run();

        // Peer 1 never joins: peer 0 gives up after the bound.
        peers::reset_collective::<B>();
        let board = peers::Board::new(2, std::time::Duration::from_millis(500), peers::reset_collective::<B>, None);
        let started = std::time::Instant::now();
        let error = std::thread::scope(|scope| {
            let watchdog = scope.spawn(|| board.watch());
            let joined = peers::Peer::<B>::join(0, 2, None, board.clone(), device, &net);
            board.finish();
            watchdog.join().unwrap();
            joined.err().expect("peer 0 cannot run alone")
        });
        let waited = started.elapsed().as_secs_f64();
        assert!((0.5..10.0).contains(&waited), "gave up after {waited} s");
        assert!(error.to_string().contains("peer 1 did not reach the start of the run within 0.5 s"), "{error}");

        // Peer 1 joins, then fails before the first exchange: peer 0's exchange says why.
        peers::reset_collective::<B>();
        let board = peers::Board::new(2, std::time::Duration::from_secs(60), peers::reset_collective::<B>, None);
        let error = std::thread::scope(|scope| {
            let watchdog = scope.spawn(|| board.watch());
            let other = scope.spawn(|| {
                let peer = peers::Peer::<B>::join(1, 2, None, board.clone(), device, &net).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(100));
                board.fail(peer.rank(), "its data folder vanished");
            });
            let peer = peers::Peer::<B>::join(0, 2, None, board.clone(), device, &net).unwrap();
            let error = peer.exchange(0, peers::LocalPart { images: 0, skipped: 0, result: None }).err().expect("peer 1 failed");
            other.join().unwrap();
            board.finish();
            watchdog.join().unwrap();
            error
        });
        assert!(error.to_string().contains("peer 1 stopped: its data folder vanished"), "{error}");
        peers::reset_collective::<B>();
    }

    #[test]
    fn peers_that_do_not_run_alike_are_refused_at_the_start_naming_the_first_difference() {
        use snnet_train::peers;
        let device = Default::default();
        let net = family().build::<B>(&device).unwrap();
        let other_weights = family().build::<B>(&device).unwrap();
        let _only_run = peers::exclusive_run();
        let weights = |net: &snnet_core::StitchedNet<B, snnet_anchors::AnyAnchor<B>>| -> Vec<(String, Vec<f32>)> {
            net.named_tensors().into_iter().map(|(k, t)| (k, t.data)).collect()
        };
        let settings = |seed: &str| vec![("batch_size".to_string(), "4".to_string()), ("seed".to_string(), seed.to_string())];
        // Each case: what peer 1 runs with, and what both peers must be told.
        let cases: [(Vec<(String, String)>, Vec<(String, Vec<f32>)>, &str); 3] = [
            (settings("0"), weights(&net), ""),
            (settings("7"), weights(&net), "setting `seed` differs between them"),
            (settings("0"), weights(&other_weights), "weights of `"),
        ];
        for (peer1_settings, peer1_weights, expected) in cases {
            peers::reset_collective::<B>();
            let board = peers::Board::new(2, std::time::Duration::from_secs(60), peers::reset_collective::<B>, None);
            let outcomes: Vec<Result<(), String>> = std::thread::scope(|scope| {
                let runs = [(settings("0"), weights(&net)), (peer1_settings, peer1_weights)];
                let handles: Vec<_> = runs
                    .into_iter()
                    .enumerate()
                    .map(|(rank, (mine, my_weights))| {
                        let (board, net) = (board.clone(), &net);
                        scope.spawn(move || {
                            let peer = peers::Peer::<B>::join(rank, 2, None, board, Default::default(), net).unwrap();
                            let agreed = peer.agree(&mine, &my_weights).map_err(|e| e.to_string());
                            peer.leave();
                            agreed
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for outcome in outcomes {
                match expected {
                    "" => assert!(outcome.is_ok(), "{outcome:?}"),
                    _ => assert!(outcome.as_ref().is_err_and(|e| e.contains(expected)), "expected {expected:?}: {outcome:?}"),
                }
            }
        }
        peers::reset_collective::<B>();
    }

    /// burn 0.21 can lose a parameter's gradient when another thread finishes a backward pass
    /// while a step is being recorded (tracel-ai/burn#5573; here: the patch embedding's and the
    /// class token's). Steps from one network value, whose parameters earlier steps' backward
    /// passes have already consumed, must all make the same update while another thread keeps
    /// running backward passes. Without the step's fresh leaves 10–20 of these 150 differ.
    #[test]
    fn steps_are_exact_while_another_thread_runs_backward_passes() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let device = Default::default();
        B::seed(&device, 6);
        let start = family().build::<B>(&device).unwrap();
        let images = Tensor::<B, 4>::random([4, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let labels = Tensor::<B, 1, Int>::from_ints([0, 1, 2, 3], &device);
        let stitched = (0..start.num_routes()).rev().find(|&i| !start.route(i).unwrap().is_anchor()).unwrap();
        let step = || {
            let mut optimizer = AdamW::<B>::new(AdamWConfig::default());
            let config = StepConfig::default();
            let (net, outcome) =
                train_step(start.clone(), &mut optimizer, images.clone(), labels.clone(), None, stitched, 1e-3, &config).unwrap();
            (params(&net), outcome.optimizer.grad_norm.value())
        };
        let expected = step();
        let done = AtomicBool::new(false);
        let differing = std::thread::scope(|scope| {
            scope.spawn(|| {
                let x = Tensor::<B, 2>::random([24, 24], Distribution::Normal(0.0, 1.0), &Default::default()).require_grad();
                while !done.load(Ordering::Relaxed) {
                    let grads = x.clone().matmul(x.clone()).sum().backward();
                    assert!(x.grad(&grads).is_some());
                }
            });
            let differing = (0..150).filter(|_| step() != expected).count();
            done.store(true, Ordering::Relaxed);
            differing
        });
        assert_eq!(differing, 0, "{differing} of 150 steps differ");
    }

    #[test]
    fn lora_stitching_layers_train_their_factors_and_bias_and_keep_the_dense_weight() {
        use snnet_core::SpaceSettings;
        let device = Default::default();
        B::seed(&device, 4);
        let vit = |d, depth, h| VitConfig { img_size: 16, patch_size: 8, num_classes: 5, ..VitConfig::deit3(d, depth, h, 0.5) };
        let anchors = [(8, 2, 2), (12, 4, 3)].map(|(d, depth, h)| AnchorSpec::Explicit(Architecture::Vit(vit(d, depth, h)))).to_vec();
        let space = SpaceSettings { lora_rank: 2, ..SpaceSettings::two_way() };
        let mut net = Description { anchors, space, behaviour: Default::default() }.build::<B>(&device).unwrap();
        let images = Tensor::<B, 4>::random([4, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let labels = Tensor::<B, 1, Int>::from_ints([0, 1, 2, 3], &device);
        let mut optimizer = AdamW::<B>::new(AdamWConfig::default());
        let before = params(&net);
        // Route 2: S→L through `stitch_layers.0.0`. Two steps: the first moves `lora_B` (zero at
        // first, so `lora_A` has no gradient yet), the second `lora_A` too.
        for _ in 0..2 {
            net = train_step(net, &mut optimizer, images.clone(), labels.clone(), None, 2, 1e-2, &StepConfig::default()).unwrap().0;
        }
        let after = params(&net);
        let layer = "stitch_layers.0.0.transform";
        assert_eq!(before[&format!("{layer}.weight")], after[&format!("{layer}.weight")], "the dense weight is frozen");
        for part in ["bias", "lora_A", "lora_B"] {
            assert_ne!(before[&format!("{layer}.{part}")], after[&format!("{layer}.{part}")], "{part} trains");
        }
        assert_ne!(before["anchors.1.head.weight"], after["anchors.1.head.weight"], "the anchors train");
        assert_eq!(before["stitch_layers.1.0.transform.lora_B"], after["stitch_layers.1.0.transform.lora_B"], "off the route");
    }

    #[test]
    fn frozen_anchors_leave_only_stitching_layers_to_train() {
        let device = Default::default();
        let net = family().build::<B>(&device).unwrap();
        let stitched = (0..net.num_routes()).rev().find(|&i| !net.route(i).unwrap().is_anchor()).unwrap();
        let (changed, _) = step_changes(0.0, stitched, false);
        assert!(!changed.is_empty());
        assert!(changed.iter().all(|k| k.starts_with("stitch_layers.")), "{changed:?}");
        let (changed, _) = step_changes(0.0, 0, false);
        assert!(changed.is_empty(), "an anchor route with frozen anchors changes nothing: {changed:?}");
    }
}

mod joint_training {
    use std::collections::BTreeMap;

    use burn::backend::{Autodiff, Flex};
    use snnet_anchors::{AnchorSpec, AnyAnchor, Architecture, Description, VitConfig};
    use snnet_core::StitchedNet;
    use snnet_train::{train, Augment, RouteSampler, RunOptions, TrainConfig, TrainError, UniformSampler};

    type B = Autodiff<Flex>;
    type Net = StitchedNet<B, AnyAnchor<B>>;

    /// 26 images in 5 classes (two are left over at batch 4).
    const SYNTHETIC: super::Synthetic = super::Synthetic { len: 26, broken: None };

    /// Two small ViTs with drop path.
    fn anchors() -> Vec<AnchorSpec> {
        let vit = |d, h| VitConfig { img_size: 16, patch_size: 8, num_classes: 5, drop_path_rate: 0.3, ..VitConfig::new(d, 3, h) };
        [(8, 2), (12, 3)].map(|(d, h)| AnchorSpec::Explicit(Architecture::Vit(vit(d, h)))).to_vec()
    }

    fn net() -> Net {
        Description { anchors: anchors(), space: Default::default(), behaviour: Default::default() }
            .build::<B>(&Default::default())
            .unwrap()
    }

    #[test]
    fn flops_groups_over_a_networks_routes_take_its_costs_and_name_an_unknown_route() {
        use snnet_train::{FlopsGap, FlopsGroupedSampler};
        let net = net();
        let routes: Vec<usize> = (0..net.num_routes()).collect();
        let pairs: Vec<(usize, f64)> = routes.iter().map(|&id| (id, net.costs()[id].flops as f64)).collect();
        let gap = FlopsGap::Relative(0.2);
        let over = FlopsGroupedSampler::over_routes(&net, &routes, gap, None, 3).unwrap();
        assert_eq!(over.groups(), FlopsGroupedSampler::new(&pairs, gap, None, 3).unwrap().groups());
        let unknown = net.num_routes();
        let err = FlopsGroupedSampler::over_routes(&net, &[0, unknown], gap, None, 3).unwrap_err().to_string();
        assert!(err.contains(&unknown.to_string()), "{err}");
    }

    /// The warmup is 15 % of 3 epochs, 0.44999999999999996: a value JSON must read back exactly for
    /// a checkpoint's settings to equal the run's.
    fn config() -> TrainConfig {
        TrainConfig {
            epochs: 2,
            batch_size: 4,
            lr: 2e-3,
            warmup_epochs: 0.15 * 3.0,
            augment: Some(Augment::default()),
            ..Default::default()
        }
    }

    fn params(net: &Net) -> BTreeMap<String, Vec<f32>> {
        net.named_tensors().into_iter().map(|(k, t)| (k, t.data)).collect()
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("snnet-train-run-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// The same two anchors in SN-Netv2's two-way space with rank-2 LoRA stitching layers.
    fn net_v2() -> Net {
        let space = snnet_core::SpaceSettings { lora_rank: 2, ..snnet_core::SpaceSettings::two_way() };
        Description { anchors: anchors(), space, behaviour: Default::default() }.build::<B>(&Default::default()).unwrap()
    }

    /// Trains `net` with a uniform sampler, or SN-Netv2's FLOPs-grouped one over its trained routes.
    fn run(
        net: Net,
        options: &RunOptions,
        config: &TrainConfig,
        routes: &mut Vec<usize>,
    ) -> Result<(Net, snnet_train::TrainReport), TrainError> {
        let mut sampler: Box<dyn RouteSampler> = if net.space().settings.kind == snnet_core::SpaceKind::TwoWay {
            let routes = net.space().trained_routes();
            Box::new(
                snnet_train::FlopsGroupedSampler::over_routes(&net, &routes, snnet_train::FlopsGap::Relative(0.2), Some(2.0), 11).unwrap(),
            )
        } else {
            Box::new(UniformSampler::new(net.num_routes(), 11))
        };
        train(net, &SYNTHETIC, sampler.as_mut(), config, None, options, |p| routes.push(p.route))
    }

    #[test]
    fn a_killed_run_resumed_from_its_checkpoint_ends_with_the_same_weights() {
        killed_and_resumed(net, "one-way");
    }

    #[test]
    fn a_killed_two_way_lora_run_with_flops_grouped_sampling_resumes_to_the_same_weights() {
        killed_and_resumed(net_v2, "two-way");
    }

    /// A run killed after step 10 and resumed from its step-8 checkpoint ends where the
    /// uninterrupted run ends.
    fn killed_and_resumed(net: fn() -> Net, tag: &str) {
        let start = net();
        let config = config();
        let mut routes_whole = Vec::new();
        let whole_dir = dir(&format!("{tag}-whole"));
        let options = RunOptions { checkpoint_dir: Some(whole_dir.clone()), checkpoint_every: Some(4), ..Default::default() };
        let (whole, report) = run(start.clone(), &options, &config, &mut routes_whole).unwrap();
        assert_eq!(report.steps, 12, "2 epochs of 6 full batches");
        assert_eq!(routes_whole.len(), 12);
        assert!(report.epoch_losses.iter().all(|l| l.is_finite()));
        assert_ne!(params(&whole), params(&start), "training changed the weights");

        // Killed after step 10: the last checkpoint is the one of step 8 (mid second epoch).
        let killed_dir = dir(&format!("{tag}-killed"));
        let mut routes_killed = Vec::new();
        let killed = RunOptions {
            checkpoint_dir: Some(killed_dir.clone()),
            checkpoint_every: Some(4),
            stop_after_steps: Some(10),
            ..Default::default()
        };
        let (_, report) = run(start.clone(), &killed, &config, &mut routes_killed).unwrap();
        assert_eq!(report.steps, 10);
        let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(killed_dir.join("checkpoint.json")).unwrap()).unwrap();
        assert_eq!(index["position"]["global_step"], 8);
        assert_eq!(index["position"]["batch_in_epoch"], 2);

        // Resumed into a network with other (fresh random) weights: the checkpoint decides.
        let mut routes_resumed = Vec::new();
        let resume = RunOptions { checkpoint_dir: Some(killed_dir.clone()), checkpoint_every: Some(4), resume: true, ..Default::default() };
        let (resumed, report) = run(net(), &resume, &config, &mut routes_resumed).unwrap();
        assert_eq!((report.resumed_from, report.steps), (8, 12));
        assert_eq!(routes_resumed, routes_whole[8..], "the sampler continues where it was");
        assert_eq!(params(&resumed), params(&whole), "resumed weights are the uninterrupted run's, bit for bit");
        // Only the current generation is kept.
        let files: Vec<String> = std::fs::read_dir(&killed_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(files.len(), 3, "{files:?}");
    }

    #[test]
    fn two_peer_runs_of_either_route_policy_are_reproducible_and_resume_exactly() {
        use snnet_train::RoutePolicy;
        let start = net();
        let mut finals = Vec::new();
        for policy in [RoutePolicy::PerPeer, RoutePolicy::Shared] {
            let tag = format!("{policy:?}");
            let config = TrainConfig { peers: 2, route_policy: policy, ..config() };
            let options =
                RunOptions { checkpoint_dir: Some(dir(&format!("whole-2p-{tag}"))), checkpoint_every: Some(4), ..Default::default() };
            let mut routes = Vec::new();
            let (whole, _) = run(start.clone(), &options, &config, &mut routes).unwrap();
            assert_eq!(routes.len(), 12, "peer 0 reports every step");
            let (again, _) = run(start.clone(), &RunOptions::default(), &config, &mut Vec::new()).unwrap();
            assert_eq!(params(&whole), params(&again), "{tag}: threads do not change the result");
            let killed_dir = dir(&format!("killed-2p-{tag}"));
            let killed = RunOptions {
                checkpoint_dir: Some(killed_dir.clone()),
                checkpoint_every: Some(4),
                stop_after_steps: Some(10),
                ..Default::default()
            };
            let _ = run(start.clone(), &killed, &config, &mut Vec::new()).unwrap();
            let resumed =
                RunOptions { checkpoint_dir: Some(killed_dir.clone()), checkpoint_every: Some(4), resume: true, ..Default::default() };
            let (resumed_net, report) = run(net(), &resumed, &config, &mut Vec::new()).unwrap();
            assert_eq!(report.resumed_from, 8);
            assert_eq!(params(&resumed_net), params(&whole), "{tag}: resumed weights are the uninterrupted run's");
            // Another peer count would train other shards (and, per peer, other routes): refused.
            let other = TrainConfig { peers: 1, ..config.clone() };
            let err = run(net(), &resumed, &other, &mut Vec::new()).unwrap_err();
            assert!(err.to_string().contains("peers"), "{err}");
            finals.push(params(&whole));
        }
        assert_ne!(finals[0], finals[1], "a route per peer trains other routes than one route per step");
        let err = run(start, &RunOptions::default(), &TrainConfig { peers: 5, ..config() }, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("peers"), "{err}");
    }

    #[test]
    fn a_run_of_two_peers_on_one_route_per_step_trains_as_one_device_does() {
        // Without drop path (each peer draws its own masks), 12 steps of two peers on a shared
        // route end where one device ends, up to rounding.
        let mut start = net();
        for anchor in &mut start.anchors {
            anchor.set_drop_path_rate(0.0).unwrap();
        }
        let one = TrainConfig { peers: 1, ..config() };
        let two = TrainConfig { peers: 2, route_policy: snnet_train::RoutePolicy::Shared, ..config() };
        let (mut routes_one, mut routes_two) = (Vec::new(), Vec::new());
        let (alone, report_one) = run(start.clone(), &RunOptions::default(), &one, &mut routes_one).unwrap();
        let (shared, report_two) = run(start.clone(), &RunOptions::default(), &two, &mut routes_two).unwrap();
        assert_eq!(routes_one, routes_two, "the same route at every step");
        for (a, b) in report_one.epoch_losses.iter().zip(&report_two.epoch_losses) {
            assert!((a - b).abs() <= 1e-4 * a.abs(), "epoch loss {a} vs {b}");
        }
        let (a, b) = (params(&alone), params(&shared));
        assert_ne!(a, params(&start));
        for (key, va) in &a {
            let diff = va.iter().zip(&b[key]).fold(0f32, |m, (x, y)| m.max((x - y).abs() / x.abs().max(1.0)));
            assert!(diff <= 1e-4, "{key}: relative difference {diff} after 12 steps");
        }
    }

    #[test]
    fn a_peer_whose_shard_could_not_be_read_still_takes_part_in_the_step() {
        // Four peers of one image each; sample 5 is broken, so at its step one peer has nothing.
        let broken = super::Synthetic { len: 26, broken: Some(5) };
        let config = TrainConfig { peers: 4, route_policy: snnet_train::RoutePolicy::Shared, augment: None, ..config() };
        let mut sampler = UniformSampler::new(net().num_routes(), 11);
        let (_, report) = train(net(), &broken, &mut sampler, &config, None, &RunOptions::default(), |_| {}).unwrap();
        let mut alone = UniformSampler::new(net().num_routes(), 11);
        let one = TrainConfig { peers: 1, ..config.clone() };
        let (_, expected) = train(net(), &broken, &mut alone, &one, None, &RunOptions::default(), |_| {}).unwrap();
        assert_eq!(report.steps, expected.steps);
        assert!(expected.skipped_samples > 0, "the broken sample is in a full batch");
        assert_eq!(report.skipped_samples, expected.skipped_samples, "every peer's skipped samples are counted");
        assert!(report.epoch_losses.iter().all(|l| l.is_finite()));
    }

    #[test]
    fn losses_are_read_once_per_logging_interval_with_the_values_of_a_read_per_step() {
        // 26 images at batch 4: 6 steps an epoch; read every 4 steps and at each epoch's end.
        let start = net();
        let reads = |log_every: usize| {
            let options = RunOptions { log_every, ..Default::default() };
            let mut read_at = Vec::new();
            let mut sampler = UniformSampler::new(start.num_routes(), 11);
            let (_, report) = train(start.clone(), &SYNTHETIC, &mut sampler as &mut dyn RouteSampler, &config(), None, &options, |p| {
                assert_eq!(p.loss.is_some(), p.epoch_loss.is_some());
                if p.loss.is_some() {
                    read_at.push(p.step);
                }
            })
            .unwrap();
            (read_at, report.epoch_losses)
        };
        let (every_step, per_step_losses) = reads(1);
        assert_eq!(every_step, (1..=12).collect::<Vec<_>>());
        let (read_at, losses) = reads(4);
        assert_eq!(read_at, [4, 6, 10, 12]);
        assert_eq!(losses, per_step_losses, "the epoch losses do not depend on when they are read");
    }

    #[test]
    fn a_diverging_run_stops_at_the_next_read_naming_the_step_and_checkpoints_nothing_after_it() {
        let d = dir("diverged");
        // A learning rate no network survives: after the first update the attention logits overflow.
        let config = TrainConfig { lr: 1e30, warmup_epochs: 0.0, augment: None, ..config() };
        let options = RunOptions { checkpoint_dir: Some(d.clone()), checkpoint_every: Some(3), log_every: 5, ..Default::default() };
        match run(net(), &options, &config, &mut Vec::new()) {
            Err(TrainError::Diverged { step, loss, .. }) => {
                assert!((1..3).contains(&step) && !loss.is_finite(), "step {step}, loss {loss}");
            }
            other => panic!("expected a divergence error, got {:?}", other.map(|(_, report)| report)),
        }
        assert!(!d.join("checkpoint.json").exists(), "a checkpoint of the diverged run was written");
    }

    #[test]
    fn resuming_with_other_settings_or_a_broken_checkpoint_is_a_clear_error() {
        let d = dir("settings");
        let options = RunOptions { checkpoint_dir: Some(d.clone()), stop_after_steps: Some(7), ..Default::default() };
        run(net(), &options, &config(), &mut Vec::new()).unwrap();
        let resume = RunOptions { checkpoint_dir: Some(d.clone()), resume: true, ..Default::default() };
        let other = TrainConfig { lr: 1e-3, ..config() };
        let err = run(net(), &resume, &other, &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("checkpoint.json") && err.contains("lr"), "{err}");

        let index = d.join("checkpoint.json");
        let text = std::fs::read_to_string(&index).unwrap();
        std::fs::write(&index, &text[..text.len() / 2]).unwrap();
        let err = run(net(), &resume, &config(), &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("checkpoint.json") && err.contains("corrupt"), "{err}");

        std::fs::write(&index, &text).unwrap();
        let model = d.join(serde_json::from_str::<serde_json::Value>(&text).unwrap()["model"].as_str().unwrap());
        std::fs::write(&model, b"not a safetensors file").unwrap();
        let err = run(net(), &resume, &config(), &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("model-"), "{err}");
    }

    #[test]
    fn impossible_settings_are_refused_before_training() {
        for (config, setting) in [
            (TrainConfig { batch_size: 0, ..config() }, "batch_size"),
            (TrainConfig { batch_size: 27, ..config() }, "batch_size"),
            (TrainConfig { lr: f64::NAN, ..config() }, "lr"),
            (TrainConfig { warmup_epochs: 3.0, ..config() }, "warmup_epochs"),
        ] {
            let err = run(net(), &RunOptions::default(), &config, &mut Vec::new()).unwrap_err();
            assert!(matches!(&err, TrainError::Setting { setting: s, .. } if s == setting), "{err}");
        }
    }
}

mod evaluation {
    use burn::{
        backend::Flex,
        tensor::{Tensor, TensorData},
    };
    use snnet_anchors::{AnchorSpec, Architecture, Description, VitConfig};
    use snnet_train::{append_result, data::Dataset, done_routes, evaluate_routes};

    /// 10 images with labels 0..5; sample 4 is unreadable.
    const SYNTHETIC: super::Synthetic = super::Synthetic { len: 10, broken: Some(4) };

    #[test]
    fn every_route_is_evaluated_and_results_resume() {
        let device = Default::default();
        let vit = |d, h| VitConfig { img_size: 16, patch_size: 8, num_classes: 5, ..VitConfig::new(d, 3, h) };
        let anchors = [(8, 2), (12, 3)].map(|(d, h)| AnchorSpec::Explicit(Architecture::Vit(vit(d, h)))).to_vec();
        let net = Description { anchors, space: Default::default(), behaviour: Default::default() }.build::<Flex>(&device).unwrap();
        let routes: Vec<usize> = (0..net.num_routes()).collect();
        let mut progress = Vec::new();
        let results = evaluate_routes(&net, &SYNTHETIC, &routes, 4, |n| progress.push(n)).unwrap();
        assert_eq!(progress, vec![4, 7, 9], "the broken sample (in the second batch) is skipped");
        assert_eq!(results.len(), net.num_routes());
        // Route 1 by hand: forward the 9 readable images, count arg-max hits.
        let readable: Vec<usize> = (0..10).filter(|&i| i != 4).collect();
        let data: Vec<f32> = readable.iter().flat_map(|&i| SYNTHETIC.get(i).unwrap().image).collect();
        let logits = net.forward(Tensor::<Flex, 4>::from_data(TensorData::new(data, [9, 3, 16, 16]), &device), 1).unwrap();
        let hits = logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap()
            .iter()
            .zip(&readable)
            .filter(|(p, &i)| **p as usize == i % 5)
            .count();
        assert!((results[1].acc1 - 100.0 * hits as f64 / 9.0).abs() < 1e-9);
        assert!(results.iter().all(|r| r.acc5 >= r.acc1 && r.images == 9 && r.flops > 0));
        // Three threads sharing the routes give the same rows.
        let parallel = snnet_train::evaluate_routes_parallel(&net, &SYNTHETIC, &routes, 4, 3, |_| {}).unwrap();
        assert_eq!(parallel, results);

        let dir = std::env::temp_dir().join(format!("snnet-eval-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("results.jsonl");
        let _ = std::fs::remove_file(&file);
        assert!(done_routes(&file).unwrap().is_empty());
        for r in &results[..3] {
            append_result(&file, r).unwrap();
        }
        assert_eq!(done_routes(&file).unwrap().into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
        let line: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&file).unwrap().lines().next().unwrap()).unwrap();
        for field in ["cfg_id", "flops", "params", "acc1", "acc5", "params_exact"] {
            assert!(line.get(field).is_some(), "{field} in {line}");
        }
        assert!(evaluate_routes(&net, &SYNTHETIC, &[999], 4, |_| {}).is_err());
    }
}

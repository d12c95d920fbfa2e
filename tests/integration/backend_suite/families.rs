//! The families the suite runs, each with its official weights written once as an snnet file that
//! every backend loads.

use snnet::Kernels;
use std::path::{Path, PathBuf};

use burn::{
    backend::Flex,
    tensor::{Int, Tensor, TensorData},
};
use snnet::{AnyAnchor, Description, StitchedNet};

use crate::integration::common::fixture;

/// A family of the suite: its description file and where its weights come from.
pub struct Family {
    /// Shown in failures.
    pub name: &'static str,
    description: &'static str,
    /// Description overrides (e.g. nearest stitching off).
    nearest_stitching: Option<bool>,
    weights: Weights,
}

enum Weights {
    /// An official SN-Net checkpoint of the whole network.
    Network(&'static str),
    /// One timm checkpoint per anchor; stitching layers as initialised from the seed.
    Anchors(&'static [&'static str]),
}

/// Every family of the suite.
pub fn families() -> Vec<Family> {
    vec![
        Family {
            name: "vit (nearest stitching)",
            description: "import/mini_vit.json",
            nearest_stitching: None,
            weights: Weights::Network("import/snnet_official.safetensors"),
        },
        Family {
            name: "vit (every pair)",
            description: "import/mini_vit.json",
            nearest_stitching: Some(false),
            weights: Weights::Anchors(&["import/vit0.safetensors", "import/vit1.safetensors", "import/vit2.safetensors"]),
        },
        Family {
            name: "swin",
            description: "swin/mini_swin.json",
            nearest_stitching: None,
            weights: Weights::Network("swin/snnet_swin.pth"),
        },
        Family {
            name: "resnet",
            description: "resnet/r18_r50.json",
            nearest_stitching: None,
            weights: Weights::Network("resnet/snnet_r18_r50.pth"),
        },
        Family {
            name: "levit",
            description: "levit/mini_levit.json",
            nearest_stitching: None,
            weights: Weights::Network("levit/snnet_levit.pth"),
        },
        Family {
            name: "sn-netv2 (two-way, LoRA)",
            description: "snnetv2/s4_l8_description.json",
            nearest_stitching: None,
            weights: Weights::Network("snnetv2/s4_l8_official.safetensors"),
        },
        Family {
            name: "resnet→swin",
            description: "resnet/r18_swin.json",
            nearest_stitching: None,
            weights: Weights::Network("resnet/snnet_r18_swin.safetensors"),
        },
    ]
}

impl Family {
    /// The description, with every anchor's drop-path rate set to `drop_path`.
    pub fn description(&self, drop_path: f64) -> Description {
        let path = fixture(self.description);
        let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for anchor in json["anchors"].as_array_mut().unwrap() {
            anchor["drop_path_rate"] = drop_path.into();
        }
        if let Some(nearest) = self.nearest_stitching {
            json["space"]["nearest_stitching"] = nearest.into();
        }
        Description::from_json(&json.to_string(), &path.display().to_string()).unwrap()
    }

    /// The network on the CPU with the family's weights, and those weights as an snnet file.
    pub fn on_cpu(&self, drop_path: f64) -> (StitchedNet<Flex, AnyAnchor<Flex>>, WeightFile) {
        let net = self.build::<Flex>(&Default::default(), drop_path);
        let net = match self.weights {
            Weights::Network(file) => net.load(&fixture(file)).unwrap_or_else(|e| panic!("{}: {e}", self.name)).0,
            Weights::Anchors(files) => files.iter().enumerate().fold(net, |net, (i, file)| net.load_anchor(i, &fixture(file)).unwrap().0),
        };
        let file = WeightFile::new(self.name);
        net.save(file.path(), Default::default()).unwrap();
        (net, file)
    }

    /// The network on backend `B`, seeded (its stitching layers' initial values), without weights.
    pub fn build<B: Kernels>(&self, device: &B::Device, drop_path: f64) -> StitchedNet<B, AnyAnchor<B>> {
        B::seed(device, 7);
        self.description(drop_path).build::<B>(device).unwrap()
    }

    /// The network on backend `B` with the weights of `file`.
    pub fn load<B: Kernels>(&self, device: &B::Device, drop_path: f64, file: &WeightFile) -> StitchedNet<B, AnyAnchor<B>> {
        self.build::<B>(device, drop_path).load(file.path()).unwrap_or_else(|e| panic!("{}: {e}", self.name)).0
    }

    /// `[channels, height, width]` of the images the network takes.
    pub fn input(&self) -> [usize; 3] {
        self.description(0.0).layouts().unwrap()[0].input
    }
}

/// A weight file in the temporary directory, removed when dropped.
pub struct WeightFile(PathBuf);

impl WeightFile {
    /// A fresh path for `name`.
    pub fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let tag: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("snnet-suite-{}-{n}-{tag}.safetensors", std::process::id())))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WeightFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Host data that every backend turns into the same tensors.
#[derive(Clone)]
pub struct HostImages {
    values: Vec<f32>,
    shape: [usize; 4],
}

impl HostImages {
    /// `batch` images of `input`, values in [−2, 2) from a fixed sequence.
    pub fn new(batch: usize, input: [usize; 3], seed: u64) -> Self {
        let [c, h, w] = input;
        let mut rng = snnet::train::SplitMix64::new(seed);
        let values = (0..batch * c * h * w).map(|_| (rng.unit() as f32 - 0.5) * 4.0).collect();
        Self { values, shape: [batch, c, h, w] }
    }

    /// The images on `device`.
    pub fn on<B: Kernels>(&self, device: &B::Device) -> Tensor<B, 4> {
        Tensor::from_data(TensorData::new(self.values.clone(), self.shape), device)
    }

    /// One label per image, from 10 classes.
    pub fn labels<B: Kernels>(&self, device: &B::Device) -> Tensor<B, 1, Int> {
        let labels: Vec<i64> = (0..self.shape[0] as i64).map(|i| (i * 7 + 3) % 10).collect();
        Tensor::from_data(TensorData::new(labels, [self.shape[0]]), device)
    }
}

/// A tensor's values on the host, as f32.
pub fn host<B: Kernels, const N: usize>(t: Tensor<B, N>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// Largest |a − b| over the largest |b| (over 1 where `b` is all zeros).
pub fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

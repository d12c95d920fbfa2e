//! ImageFolder trees: `root/<class>/<image>.{jpg,jpeg,png}`, classes in sorted order (as
//! torchvision's `ImageFolder` assigns labels), images decoded and preprocessed on access —
//! converted to the network's channels whatever their own (RGB for three, luminance for one).

use std::path::{Path, PathBuf};

use super::{DataError, Dataset, Preprocess, Sample};

/// How a decoded image (of any colour type) becomes a network's input.
#[derive(Clone, Debug, PartialEq)]
enum Conversion {
    /// RGB with timm's evaluation preprocessing: `[3, size, size]`.
    Rgb(Preprocess),
    /// The luminance resized to `height × width` and normalised as Fashion-MNIST: `[1, height, width]`.
    Luma { height: usize, width: usize },
}

impl Conversion {
    /// The conversion for a network whose input is `[channels, height, width]`: three channels
    /// (square) read RGB, one reads the luminance; other inputs have none.
    fn for_input(input: [usize; 3]) -> Option<Self> {
        match input {
            [3, h, w] if h == w => Some(Conversion::Rgb(Preprocess::imagenet(h))),
            [1, height, width] => Some(Conversion::Luma { height, width }),
            _ => None,
        }
    }

    fn shape(&self) -> [usize; 3] {
        match self {
            Conversion::Rgb(p) => [3, p.size, p.size],
            Conversion::Luma { height, width } => [1, *height, *width],
        }
    }

    fn apply(&self, image: &image::DynamicImage) -> Vec<f32> {
        match self {
            Conversion::Rgb(p) => p.apply(&image.to_rgb8()),
            Conversion::Luma { height, width } => {
                let (w, h) = (*width as u32, *height as u32);
                let gray = image.to_luma8();
                let gray = if gray.dimensions() == (w, h) {
                    gray
                } else {
                    image::imageops::resize(&gray, w, h, image::imageops::FilterType::Triangle)
                };
                gray.pixels().map(|p| super::fashion_mnist::normalise(p[0])).collect()
            }
        }
    }
}

/// Image files under class folders.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    samples: Vec<(PathBuf, usize)>,
    conversion: Conversion,
}

impl ImageFolder {
    /// [`ImageFolder::open`] for a network whose input is `input` (`[channels, height, width]`):
    /// every image, grayscale or colour, is converted to the network's channels — RGB with timm's
    /// evaluation preprocessing for a square three-channel input, the luminance resized and
    /// normalised as [`FashionMnist`](super::FashionMnist) for one channel. Other inputs get RGB
    /// images, which the caller can then refuse by their [`shape`](Dataset::shape).
    pub fn open_for_input(root: &Path, input: [usize; 3]) -> Result<Self, DataError> {
        let conversion = Conversion::for_input(input).unwrap_or_else(|| Conversion::Rgb(Preprocess::imagenet(input[1])));
        Self::scan(root, conversion)
    }

    /// Scans `root`: every sub-folder is a class (sorted by name), every `.jpg`/`.jpeg`/`.png` file
    /// in it (any case, sorted by name) a sample, read as RGB and preprocessed by `preprocess`.
    /// Files are not decoded here.
    pub fn open(root: &Path, preprocess: Preprocess) -> Result<Self, DataError> {
        Self::scan(root, Conversion::Rgb(preprocess))
    }

    fn scan(root: &Path, conversion: Conversion) -> Result<Self, DataError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataError::Io { path, source }
        };
        let mut classes: Vec<String> = std::fs::read_dir(root)
            .map_err(io(root))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        classes.sort();
        if classes.is_empty() {
            return Err(DataError::Empty { path: root.into(), reason: "no class sub-folders".into() });
        }
        let mut samples = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let dir = root.join(class);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(io(&dir))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            files.sort();
            samples.extend(files.into_iter().map(|p| (p, label)));
        }
        if samples.is_empty() {
            return Err(DataError::Empty {
                path: root.into(),
                reason: format!("no .jpg/.jpeg/.png files in its {} class folders", classes.len()),
            });
        }
        Ok(Self { root: root.into(), classes, samples, conversion })
    }

    /// Class names, by label.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The folder scanned.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path and label of sample `index`.
    pub fn sample_path(&self, index: usize) -> Option<(&Path, usize)> {
        self.samples.get(index).map(|(p, l)| (p.as_path(), *l))
    }
}

fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn shape(&self) -> [usize; 3] {
        self.conversion.shape()
    }

    fn num_classes(&self) -> usize {
        self.classes.len()
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let (path, label) = self.samples.get(index).ok_or(DataError::OutOfRange { index, len: self.samples.len() })?;
        Ok(Sample { image: self.conversion.apply(&decode(path)?), label: *label })
    }
}

/// Decodes an image file (a regular file; format guessed from its bytes).
fn decode(path: &Path) -> Result<image::DynamicImage, DataError> {
    let bytes = snnet_core::read_regular_file(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| DataError::Io { path: path.into(), source })?
        .decode()
        .map_err(|e| DataError::Decode { path: path.into(), reason: e.to_string() })
}

/// One image file preprocessed for a network whose input is `[channels, height, width]`: RGB
/// networks get timm's evaluation preprocessing ([`Preprocess::imagenet`]); one-channel networks
/// get the luminance resized to `height × width` and normalised as [`FashionMnist`](super::FashionMnist) is.
pub fn load_image_file(path: &Path, input: [usize; 3]) -> Result<Vec<f32>, DataError> {
    match Conversion::for_input(input) {
        Some(conversion) => Ok(conversion.apply(&decode(path)?)),
        None => Err(DataError::Mismatch(format!(
            "{}: image files are read for square RGB or one-channel networks, this one takes {input:?}",
            path.display()
        ))),
    }
}

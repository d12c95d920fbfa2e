//! ImageFolder trees: `root/<class>/<image>.{jpg,jpeg,png}`, classes in sorted order (as
//! torchvision's `ImageFolder` assigns labels), images decoded and preprocessed on access.

use std::path::{Path, PathBuf};

use super::{DataError, Dataset, Preprocess, Sample};

/// Image files under class folders.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    samples: Vec<(PathBuf, usize)>,
    preprocess: Preprocess,
}

impl ImageFolder {
    /// Scans `root`: every sub-folder is a class (sorted by name), every `.jpg`/`.jpeg`/`.png` file
    /// in it (any case, sorted by name) a sample. Files are not decoded here.
    pub fn open(root: &Path, preprocess: Preprocess) -> Result<Self, DataError> {
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
        Ok(Self { root: root.into(), classes, samples, preprocess })
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
        [3, self.preprocess.size, self.preprocess.size]
    }

    fn num_classes(&self) -> usize {
        self.classes.len()
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let (path, label) = self.samples.get(index).ok_or(DataError::OutOfRange { index, len: self.samples.len() })?;
        Ok(Sample { image: self.preprocess.apply(&decode(path)?.to_rgb8()), label: *label })
    }
}

/// Decodes an image file (format guessed from its bytes).
fn decode(path: &Path) -> Result<image::DynamicImage, DataError> {
    image::ImageReader::open(path)
        .map_err(|source| DataError::Io { path: path.into(), source })?
        .with_guessed_format()
        .map_err(|source| DataError::Io { path: path.into(), source })?
        .decode()
        .map_err(|e| DataError::Decode { path: path.into(), reason: e.to_string() })
}

/// One image file preprocessed for a network whose input is `[channels, height, width]`: RGB
/// networks get timm's evaluation preprocessing ([`Preprocess::imagenet`]); one-channel networks
/// get the luminance resized to `height × width` and normalised as [`FashionMnist`](super::FashionMnist) is.
pub fn load_image_file(path: &Path, input: [usize; 3]) -> Result<Vec<f32>, DataError> {
    let image = decode(path)?;
    match input {
        [3, h, w] if h == w => Ok(Preprocess::imagenet(h).apply(&image.to_rgb8())),
        [1, h, w] => {
            let gray = image.to_luma8();
            let gray = if gray.dimensions() == (w as u32, h as u32) {
                gray
            } else {
                image::imageops::resize(&gray, w as u32, h as u32, image::imageops::FilterType::Triangle)
            };
            Ok(gray.pixels().map(|p| super::fashion_mnist::normalise(p[0])).collect())
        }
        other => Err(DataError::Mismatch(format!(
            "{}: image files are read for square RGB or one-channel networks, this one takes {other:?}",
            path.display()
        ))),
    }
}

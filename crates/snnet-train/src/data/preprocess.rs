//! timm's evaluation preprocessing: bicubic resize of the shorter side to `size / crop_pct`,
//! centre crop to `size`, scale to `[0, 1]`, normalise by mean and standard deviation.

use image::{imageops::FilterType, RgbImage};

/// ImageNet channel means (timm `IMAGENET_DEFAULT_MEAN`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (timm `IMAGENET_DEFAULT_STD`).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Evaluation preprocessing of RGB images.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// Output side (square).
    pub size: usize,
    /// Centre-crop fraction: the shorter side is first resized to `floor(size / crop_pct)`.
    pub crop_pct: f64,
    /// Channel means subtracted after scaling to `[0, 1]`.
    pub mean: [f32; 3],
    /// Channel standard deviations divided by.
    pub std: [f32; 3],
}

impl Preprocess {
    /// timm's default for ImageNet models at `size` (crop 0.875, ImageNet mean/std).
    pub fn imagenet(size: usize) -> Self {
        Self { size, crop_pct: 0.875, mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }

    /// The side the shorter image side is resized to before cropping.
    pub fn scale_size(&self) -> usize {
        (self.size as f64 / self.crop_pct).floor() as usize
    }

    /// The preprocessed image, `[3, size, size]`.
    pub fn apply(&self, image: &RgbImage) -> Vec<f32> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let short = self.scale_size().max(self.size);
        // torchvision's Resize(int): the shorter side becomes `short`, the longer one is truncated.
        let (nw, nh) = if w <= h {
            (short, (short as f64 * h as f64 / w as f64) as usize)
        } else {
            ((short as f64 * w as f64 / h as f64) as usize, short)
        };
        let resized = image::imageops::resize(image, nw as u32, nh as u32, FilterType::CatmullRom);
        let top = round_half_even((nh - self.size) as f64 / 2.0);
        let left = round_half_even((nw - self.size) as f64 / 2.0);
        let plane = self.size * self.size;
        let mut out = vec![0.0; 3 * plane];
        for y in 0..self.size {
            for x in 0..self.size {
                let p = resized.get_pixel((left + x) as u32, (top + y) as u32);
                for c in 0..3 {
                    out[c * plane + y * self.size + x] = (p[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
                }
            }
        }
        out
    }
}

/// Python's `round`: halves go to the even neighbour (torchvision's CenterCrop uses it).
fn round_half_even(v: f64) -> usize {
    let floor = v.floor();
    let r = if v - floor == 0.5 {
        if floor as i64 % 2 == 0 {
            floor
        } else {
            floor + 1.0
        }
    } else {
        v.round()
    };
    r.max(0.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding_and_scale_size() {
        assert_eq!([0.5, 1.5, 2.5, 2.4, 2.6].map(round_half_even), [0, 2, 2, 2, 3]);
        assert_eq!(Preprocess::imagenet(224).scale_size(), 256);
    }

    #[test]
    fn centre_crop_of_a_wide_image_keeps_the_middle() {
        // 512×256: left half black, right half white; the crop of the 448×224 resize is centred.
        let img = RgbImage::from_fn(512, 256, |x, _| if x < 256 { image::Rgb([0, 0, 0]) } else { image::Rgb([255, 255, 255]) });
        let p = Preprocess { size: 224, crop_pct: 1.0, mean: [0.0; 3], std: [1.0; 3] };
        let out = p.apply(&img);
        assert_eq!(out.len(), 3 * 224 * 224);
        assert!(out[0] < 0.01 && out[223] > 0.99, "left edge dark, right edge bright");
        assert!((out[100] - 0.0).abs() < 0.01 && (out[124] - 1.0).abs() < 0.01);
    }
}

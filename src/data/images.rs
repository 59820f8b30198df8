//! A data set from folders of PNG and JPEG images (`[data] dataset = "images"`).
//!
//! Each of the training and test folders is laid out one of two ways:
//!
//! - one subfolder per class: `train/cat/001.png`, `train/dog/7.jpg`, …; the class names,
//!   sorted, are the label order (the training folder's list; a test subfolder must be
//!   one of them), and the files of a class are read in name order. Files that are not
//!   `.png`, `.jpg` or `.jpeg` are skipped;
//! - a labels file inside the folder (`labels = "labels.txt"`): one line per image,
//!   `filename label` (the label a class index 0–255; blank lines and lines starting
//!   with `#` are skipped), read in the file's order.
//!
//! Every image is decoded to 8-bit grayscale (ITU-R 601 luma, alpha dropped) or RGB,
//! resized to cover `size = [rows, cols]` with its aspect ratio kept (each output pixel
//! the area average of the source pixels it covers), centre-cropped, and scaled to
//! `[0, 1]` (value / 255). Samples have shape `[channels, rows, cols]`. An image already
//! of the target size is taken pixel for pixel.
//!
//! Bounded: a file larger than [`MAX_FILE_BYTES`] or an image side above
//! [`MAX_SIDE`] is refused before its pixels are allocated, and so is a data set of more
//! than [`MAX_VALUES`] values; a corrupt image is one error naming the file.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use super::{DataError, Dataset};

/// The largest image file read, in bytes (64 MiB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// The largest image width or height accepted.
pub const MAX_SIDE: usize = 16384;
/// The most decoded pixels per image (64 Mpixel).
pub const MAX_PIXELS: usize = 1 << 26;
/// The most `f32` values a data set may hold (4 GiB of samples).
pub const MAX_VALUES: usize = 1 << 30;
/// The largest target side (`size`).
pub const MAX_TARGET_SIDE: usize = 4096;

/// How images become samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageOptions {
    /// Target `[rows, cols]`.
    pub size: [usize; 2],
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// A labels file inside each folder (`filename label` lines) instead of class subfolders.
    pub labels: Option<PathBuf>,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions { size: [28, 28], channels: 1, labels: None }
    }
}

fn img_err(path: &Path, why: impl Into<String>) -> DataError {
    DataError::Image { path: path.to_path_buf(), why: why.into() }
}

fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// Sorted entries of `dir` (names only) that satisfy `keep`.
fn sorted_entries(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>, DataError> {
    let read = std::fs::read_dir(dir).map_err(|source| DataError::Io { path: dir.to_path_buf(), source })?;
    let mut out = Vec::new();
    for entry in read {
        let path = entry.map_err(|source| DataError::Io { path: dir.to_path_buf(), source })?.path();
        if keep(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The class names of a class-per-subfolder folder, sorted.
pub fn class_names(dir: &Path) -> Result<Vec<String>, DataError> {
    let dirs = sorted_entries(dir, |p| p.is_dir())?;
    let names: Vec<String> = dirs.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
    if names.is_empty() {
        return Err(img_err(dir, "holds no class subfolders; put each class's images in a subfolder named after it (sorted names give the label order), or set [data] labels = \"labels.txt\""));
    }
    if names.len() > 256 {
        return Err(img_err(dir, format!("holds {} class subfolders, more than the 256 classes supported", names.len())));
    }
    Ok(names)
}

/// The (file, label) list of one folder.
fn listing(dir: &Path, opts: &ImageOptions, classes: &[String]) -> Result<Vec<(PathBuf, u8)>, DataError> {
    if !dir.is_dir() {
        return Err(img_err(dir, "is not a folder; [data] train and test name folders of images with dataset = \"images\""));
    }
    if let Some(labels) = &opts.labels {
        let path = dir.join(labels);
        let text = std::fs::read_to_string(&path).map_err(|source| DataError::Io { path: path.clone(), source })?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| img_err(&path, format!("line {}: {why}; expected `filename label` (a class index 0–255)", i + 1));
            let (name, label) = line.rsplit_once(char::is_whitespace).ok_or_else(|| bad(&format!("'{line}' has no label")))?;
            let label: u8 = label.trim().parse().map_err(|_| bad(&format!("label '{}' is not a class index", label.trim())))?;
            out.push((dir.join(name.trim()), label));
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    for sub in sorted_entries(dir, |p| p.is_dir())? {
        let name = sub.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let label = classes.iter().position(|c| *c == name).ok_or_else(|| {
            img_err(&sub, format!("is a class the training folder does not have (its classes: {}); every test class needs training images", classes.join(", ")))
        })?;
        for file in sorted_entries(&sub, |p| p.is_file() && is_image(p))? {
            out.push((file, label as u8));
        }
    }
    Ok(out)
}

/// Reads one folder of images into a data set (see the module docs); `classes` are the
/// class names (label order) when the folder has class subfolders.
pub fn load_folder(dir: &Path, opts: &ImageOptions, classes: &[String]) -> Result<Dataset, DataError> {
    let [rows, cols] = opts.size;
    if !matches!(opts.channels, 1 | 3) {
        return Err(img_err(dir, format!("channels = {}: expected 1 (grayscale) or 3 (RGB)", opts.channels)));
    }
    if !(1..=MAX_TARGET_SIDE).contains(&rows) || !(1..=MAX_TARGET_SIDE).contains(&cols) {
        return Err(img_err(dir, format!("size = [{rows}, {cols}]: each side must be 1 to {MAX_TARGET_SIDE}")));
    }
    let files = listing(dir, opts, classes)?;
    let sample = opts.channels * rows * cols;
    if files.len().saturating_mul(sample) > MAX_VALUES {
        return Err(img_err(dir, format!("{} images of {sample} values exceed the {MAX_VALUES}-value limit; use fewer images or a smaller size", files.len())));
    }
    let mut images = Vec::with_capacity(files.len() * sample);
    let mut labels = Vec::with_capacity(files.len());
    for (file, label) in files {
        let (w, h, pixels) = decode_file(&file, opts.channels)?;
        images.extend(resize_to_unit(&pixels, w, h, opts.channels, cols, rows));
        labels.push(label);
    }
    let num_classes = if opts.labels.is_some() { labels.iter().map(|&l| usize::from(l) + 1).max().unwrap_or(1) } else { classes.len() };
    Ok(Dataset { images, labels, sample_shape: vec![opts.channels, rows, cols], num_classes })
}

/// Reads the training and test folders: class names from the training folder (unless a
/// labels file is used); the number of classes covers both.
pub fn load(train: &Path, test: &Path, opts: &ImageOptions) -> Result<(Dataset, Dataset), DataError> {
    let classes = if opts.labels.is_some() { Vec::new() } else { class_names(train)? };
    let (mut tr, mut te) = (load_folder(train, opts, &classes)?, load_folder(test, opts, &classes)?);
    let n = tr.num_classes.max(te.num_classes);
    (tr.num_classes, te.num_classes) = (n, n);
    Ok((tr, te))
}

/// Decodes a PNG or JPEG file (by its signature) to 8-bit pixels with `channels` values
/// each, row after row: `(width, height, pixels)`.
pub fn decode_file(path: &Path, channels: usize) -> Result<(usize, usize, Vec<u8>), DataError> {
    let len = std::fs::metadata(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?.len();
    if len > MAX_FILE_BYTES {
        return Err(img_err(path, format!("is {len} bytes, more than the {MAX_FILE_BYTES}-byte limit for one image")));
    }
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    decode(&bytes, channels).map_err(|why| img_err(path, why))
}

fn check_dims(w: usize, h: usize) -> Result<(), String> {
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE || w * h > MAX_PIXELS {
        return Err(format!("image of {w}×{h} pixels is outside the limits (1 to {MAX_SIDE} per side, {MAX_PIXELS} pixels)"));
    }
    Ok(())
}

/// Decodes PNG or JPEG bytes; the error says why, without the file.
pub fn decode(bytes: &[u8], channels: usize) -> Result<(usize, usize, Vec<u8>), String> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes, channels)
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        decode_jpeg(bytes, channels)
    } else {
        Err("is neither a PNG nor a JPEG image (unknown signature); convert it, or remove it from the folder".into())
    }
}

fn decode_png(bytes: &[u8], channels: usize) -> Result<(usize, usize, Vec<u8>), String> {
    let bad = |e: png::DecodingError| format!("is not a readable PNG image: {e}");
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: MAX_PIXELS * 8 });
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(bad)?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    check_dims(w, h)?;
    let size = reader.output_buffer_size().ok_or_else(|| format!("image of {w}×{h} pixels is too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(bad)?;
    let src = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err("is an indexed PNG that did not expand to colours".into()),
    };
    let line = info.line_size;
    let mut out = Vec::with_capacity(w * h * channels);
    for y in 0..h {
        let row = &buf[y * line..y * line + w * src];
        for px in row.chunks_exact(src) {
            match (src, channels) {
                (1 | 2, 1) => out.push(px[0]),
                (1 | 2, _) => out.extend([px[0]; 3]),
                (_, 1) => out.push(luma(px[0], px[1], px[2])),
                _ => out.extend_from_slice(&px[..3]),
            }
        }
    }
    Ok((w, h, out))
}

/// ITU-R 601 luma, as JPEG's Y and PIL's `convert("L")`.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b) + 500) / 1000) as u8
}

fn decode_jpeg(bytes: &[u8], channels: usize) -> Result<(usize, usize, Vec<u8>), String> {
    use zune_jpeg::zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};
    let bad = |e: zune_jpeg::errors::DecodeErrors| format!("is not a readable JPEG image: {e:?}");
    let space = if channels == 1 { ColorSpace::Luma } else { ColorSpace::RGB };
    let options = DecoderOptions::default().set_max_width(MAX_SIDE).set_max_height(MAX_SIDE).jpeg_set_out_colorspace(space).set_strict_mode(true);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(bad)?;
    let info = decoder.info().ok_or("is a JPEG without a frame header")?;
    let (w, h) = (usize::from(info.width), usize::from(info.height));
    check_dims(w, h)?;
    let pixels = decoder.decode().map_err(bad)?;
    if pixels.len() != w * h * channels {
        return Err(format!("decoded to {} values, expected {w}×{h}×{channels}", pixels.len()));
    }
    Ok((w, h, pixels))
}

/// For each of `n_out` output positions, the source indices and weights of the window
/// `[offset + i·step, offset + (i+1)·step)` (area average).
fn weights(n_out: usize, step: f64, offset: f64, n_src: usize) -> Vec<Vec<(usize, f32)>> {
    (0..n_out)
        .map(|i| {
            let (lo, hi) = (offset + i as f64 * step, offset + (i + 1) as f64 * step);
            let mut ws = Vec::new();
            let mut s = lo.floor() as usize;
            while (s as f64) < hi && s < n_src {
                let cover = (hi.min(s as f64 + 1.0) - lo.max(s as f64)).max(0.0);
                if cover > 0.0 {
                    ws.push((s, (cover / step) as f32));
                }
                s += 1;
            }
            if ws.is_empty() {
                ws.push(((lo as usize).min(n_src - 1), 1.0));
            }
            ws
        })
        .collect()
}

/// Resizes `w×h` 8-bit pixels (`c` channels, interleaved) to cover `tw×th` with the
/// aspect kept, centre-crops, and returns `[c, th, tw]` values in `[0, 1]`.
pub fn resize_to_unit(pixels: &[u8], w: usize, h: usize, c: usize, tw: usize, th: usize) -> Vec<f32> {
    let mut out = vec![0f32; c * th * tw];
    if w == tw && h == th {
        for (p, px) in pixels.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                out[ch * th * tw + p] = f32::from(v) / 255.0;
            }
        }
        return out;
    }
    // Source pixels per output pixel: the smaller ratio, so the output is covered.
    let step = (w as f64 / tw as f64).min(h as f64 / th as f64);
    let (ox, oy) = ((w as f64 - tw as f64 * step) / 2.0, (h as f64 - th as f64 * step) / 2.0);
    let (wx, wy) = (weights(tw, step, ox, w), weights(th, step, oy, h));
    for (y, ry) in wy.iter().enumerate() {
        for (x, rx) in wx.iter().enumerate() {
            for ch in 0..c {
                let mut acc = 0f32;
                for &(sy, a) in ry {
                    for &(sx, b) in rx {
                        acc += a * b * f32::from(pixels[(sy * w + sx) * c + ch]);
                    }
                }
                out[ch * th * tw + y * tw + x] = (acc / 255.0).clamp(0.0, 1.0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes an 8-bit PNG of `color` (`Grayscale`/`Rgb`/`Rgba`).
    pub(crate) fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, data: &[u8]) {
        let file = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(data).unwrap();
    }

    #[test]
    fn class_folders_give_sorted_labels_and_unit_pixels() {
        let d = tempfile::tempdir().unwrap();
        for (split, n) in [("train", 2u8), ("test", 1)] {
            for (c, class) in ["b_shoe", "a_bag"].iter().enumerate() {
                let dir = d.path().join(split).join(class);
                std::fs::create_dir_all(&dir).unwrap();
                for i in 0..n {
                    // 2×2 gray, value identifies the class.
                    write_png(&dir.join(format!("{i}.png")), 2, 2, png::ColorType::Grayscale, &[c as u8 * 100 + i; 4]);
                }
                std::fs::write(dir.join("notes.txt"), "skipped").unwrap();
            }
        }
        let opts = ImageOptions { size: [2, 2], channels: 1, labels: None };
        let (tr, te) = load(&d.path().join("train"), &d.path().join("test"), &opts).unwrap();
        // a_bag (value 100 + i) is class 0, b_shoe (value i) is class 1.
        assert_eq!((tr.labels.clone(), tr.num_classes, tr.sample_shape.clone()), (vec![0, 0, 1, 1], 2, vec![1, 2, 2]));
        assert_eq!(tr.image(0), &[100.0 / 255.0; 4]);
        assert_eq!(tr.image(3), &[1.0 / 255.0; 4]);
        assert_eq!(te.labels, vec![0, 1]);
        // RGB output of a gray image repeats it per channel; resizing averages areas.
        let opts = ImageOptions { size: [1, 1], channels: 3, labels: None };
        let (tr, _) = load(&d.path().join("train"), &d.path().join("test"), &opts).unwrap();
        assert_eq!((tr.sample_shape.clone(), tr.image(0)), (vec![3, 1, 1], &[100.0 / 255.0; 3][..]));
    }

    #[test]
    fn resize_covers_and_centre_crops() {
        // 4×2 (w×h) gray: columns 0,1 dark, 2,3 bright; to 1×1 the centre 2×2 is taken.
        let px = [0u8, 0, 200, 200, 0, 0, 200, 200];
        assert_eq!(resize_to_unit(&px, 4, 2, 1, 1, 1), vec![100.0 / 255.0]);
        // To 2×1 (w×h): each output averages a 2×2 block.
        let out = resize_to_unit(&px, 4, 2, 1, 2, 1);
        assert_eq!(out, vec![0.0, 200.0 / 255.0]);
        // Upscaling repeats pixels.
        assert_eq!(resize_to_unit(&[0, 255], 2, 1, 1, 4, 2), vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
        // RGB to luma, and interleaved to planar.
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(resize_to_unit(&[10, 20, 30], 1, 1, 3, 1, 1), vec![10.0 / 255.0, 20.0 / 255.0, 30.0 / 255.0]);
    }

    #[test]
    fn corrupt_and_oversized_images_are_one_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.png");
        write_png(&p, 3, 3, png::ColorType::Rgb, &[7; 27]);
        let good = std::fs::read(&p).unwrap();
        std::fs::write(&p, &good[..good.len() - 20]).unwrap();
        let e = decode_file(&p, 1).unwrap_err().to_string();
        assert!(e.contains("x.png") && e.contains("not a readable PNG"), "{e}");
        std::fs::write(&p, b"GIF89a").unwrap();
        assert!(decode_file(&p, 1).unwrap_err().to_string().contains("neither a PNG nor a JPEG"));
        // A header claiming 100000×100000 pixels is refused before allocating.
        let mut huge = good.clone();
        huge[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        huge[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32fast::hash(&huge[12..29]);
        huge[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = decode(&huge, 1).unwrap_err();
        assert!(e.contains("outside the limits") || e.contains("limit"), "{e}");
        // Truncated and mutated bytes are errors or images, never a panic.
        for (b, channels) in [(good.clone(), 3), (jpeg_bytes(), 3), (jpeg_bytes(), 1)] {
            crate::testing::fuzz_reader(&b, 2, 300, |m| decode(m, channels));
        }
    }

    fn jpeg_bytes() -> Vec<u8> {
        let mut out = Vec::new();
        let px: Vec<u8> = (0..8 * 8 * 3).map(|i| (i * 5 % 256) as u8).collect();
        jpeg_encoder::Encoder::new(&mut out, 100).encode(&px, 8, 8, jpeg_encoder::ColorType::Rgb).unwrap();
        out
    }

    #[test]
    fn jpeg_and_a_labels_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("imgs");
        std::fs::create_dir_all(&dir).unwrap();
        let gray: Vec<u8> = vec![128; 8 * 8];
        let mut j = Vec::new();
        jpeg_encoder::Encoder::new(&mut j, 100).encode(&gray, 8, 8, jpeg_encoder::ColorType::Luma).unwrap();
        std::fs::write(dir.join("a.jpg"), &j).unwrap();
        std::fs::write(dir.join("b.jpeg"), jpeg_bytes()).unwrap();
        write_png(&dir.join("c.png"), 8, 8, png::ColorType::Rgba, &[255; 8 * 8 * 4]);
        std::fs::write(dir.join("labels.txt"), "# name label\na.jpg 3\nb.jpeg 0\n\nc.png 1\n").unwrap();
        let opts = ImageOptions { size: [4, 4], channels: 1, labels: Some("labels.txt".into()) };
        let ds = load_folder(&dir, &opts, &[]).unwrap();
        assert_eq!((ds.labels.clone(), ds.num_classes, ds.sample_shape.clone()), (vec![3, 0, 1], 4, vec![1, 4, 4]));
        assert!(ds.image(0).iter().all(|v| (v - 128.0 / 255.0).abs() < 0.02), "{:?}", ds.image(0));
        assert_eq!(ds.image(2), &[1.0; 16]);
        std::fs::write(dir.join("labels.txt"), "a.jpg three\n").unwrap();
        let e = load_folder(&dir, &opts, &[]).unwrap_err().to_string();
        assert!(e.contains("labels.txt") && e.contains("line 1") && e.contains("three"), "{e}");
        std::fs::write(dir.join("labels.txt"), "missing.png 1\n").unwrap();
        assert!(load_folder(&dir, &opts, &[]).unwrap_err().to_string().contains("missing.png"));
    }
}

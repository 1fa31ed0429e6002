//! Image front end: decode (dimension check before decoding, EXIF orientation) -> channels ->
//! antialiased bilinear resize in f32 -> center crop -> scale, invert, normalize; or, with
//! `background: "auto"`, luma with alpha over the picture's own background, polarity and level
//! from its border, then (`frame`) the object's bounding box resized and centred.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::{Frame, ImageSpec, Media};
use crate::error::{bad_input, internal, too_large, ModelError};
use crate::InputLimits;

/// A planar f32 image `[channels, height, width]`, values in 0..=255.
#[derive(Debug, Clone, PartialEq)]
pub struct Planar {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

fn format_of(m: Media) -> ImageFormat {
    match m {
        Media::Png => ImageFormat::Png,
        Media::Jpeg => ImageFormat::Jpeg,
        Media::Gif => ImageFormat::Gif,
        Media::Bmp => ImageFormat::Bmp,
        Media::WebP => ImageFormat::WebP,
        Media::Wav => unreachable!("not an image"),
    }
}

/// The pixel count an image's header declares, `None` when the header cannot be read.
pub fn declared_pixels(data: &[u8], media: Media) -> Option<u64> {
    let (w, h) = ImageReader::with_format(Cursor::new(data), format_of(media))
        .into_dimensions()
        .ok()?;
    Some(w as u64 * h as u64)
}

/// Decodes an image after checking its declared dimensions against `max_pixels`.
pub fn decode(data: &[u8], media: Media, max_pixels: u64) -> Result<DynamicImage, ModelError> {
    let format = format_of(media);
    let what = media.describe();
    let (w, h) = ImageReader::with_format(Cursor::new(data), format)
        .into_dimensions()
        .map_err(|e| bad_input(format!("cannot read {what}: {e}")))?;
    if w == 0 || h == 0 {
        return Err(bad_input(format!("{what} has zero size ({w}x{h})")));
    }
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(too_large(format!(
            "{what} of {w}x{h} = {pixels} pixels exceeds the limit of {max_pixels}"
        )));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    // RGBA at 16 bits per channel plus decoder scratch.
    limits.max_alloc = Some(pixels.saturating_mul(16).saturating_add(64 << 20));
    let mut reader = ImageReader::with_format(Cursor::new(data), format);
    reader.limits(limits);
    let fail = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => too_large(format!("{what}: {l}")),
        other => bad_input(format!("cannot decode {what}: {other}")),
    };
    let mut decoder = reader.into_decoder().map_err(fail)?;
    // EXIF orientation (JPEG, PNG eXIf, WebP): a phone photo is served upright. An unreadable
    // EXIF block is treated as no orientation, like a viewer would.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(fail)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Converts to `channels` (1: luma `0.299R+0.587G+0.114B`; 3: RGB), alpha composited over black.
pub fn to_planar(img: &DynamicImage, channels: usize) -> Planar {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let n = width * height;
    let mut data = vec![0f32; channels * n];
    let color = img.color();
    let eight_bit = color.bytes_per_pixel() / color.channel_count() == 1;
    if !color.has_color() {
        // Gray source: luma is the gray value itself, replicated for RGB.
        let la: Vec<(f32, f32)> = if eight_bit {
            img.to_luma_alpha8()
                .pixels()
                .map(|p| (p.0[0] as f32, p.0[1] as f32 / 255.0))
                .collect()
        } else {
            img.to_luma_alpha32f()
                .pixels()
                .map(|p| (p.0[0] * 255.0, p.0[1]))
                .collect()
        };
        for (i, (l, a)) in la.into_iter().enumerate() {
            let v = if a >= 1.0 { l } else { l * a };
            for c in 0..channels {
                data[c * n + i] = v;
            }
        }
    } else {
        let rgba: Vec<[f32; 4]> = if eight_bit {
            img.to_rgba8()
                .pixels()
                .map(|p| {
                    [
                        p.0[0] as f32,
                        p.0[1] as f32,
                        p.0[2] as f32,
                        p.0[3] as f32 / 255.0,
                    ]
                })
                .collect()
        } else {
            img.to_rgba32f()
                .pixels()
                .map(|p| [p.0[0] * 255.0, p.0[1] * 255.0, p.0[2] * 255.0, p.0[3]])
                .collect()
        };
        for (i, [r, g, b, a]) in rgba.into_iter().enumerate() {
            let (r, g, b) = if a >= 1.0 {
                (r, g, b)
            } else {
                (r * a, g * a, b * a)
            };
            if channels == 1 {
                data[i] = 0.299 * r + 0.587 * g + 0.114 * b;
            } else {
                data[i] = r;
                data[n + i] = g;
                data[2 * n + i] = b;
            }
        }
    }
    Planar {
        channels,
        height,
        width,
        data,
    }
}

/// Filter taps of one output position along one axis.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    /// `out_size * max_len` weights, row per output position.
    weights: Vec<f32>,
    max_len: usize,
}

/// PyTorch's antialiased bilinear weights (`align_corners=False`): triangle filter stretched by
/// the scale when downscaling, taps normalised to sum 1.
#[cfg(test)]
fn taps(in_size: usize, out_size: usize) -> Taps {
    taps_range(in_size, out_size, 0..out_size)
}

/// Taps of the output positions `range` only (of an axis resized to `out_size`).
fn taps_range(in_size: usize, out_size: usize, range: std::ops::Range<usize>) -> Taps {
    // Weights in f64 like the reference (which resizes a float64 tensor), stored as f32.
    let scale = in_size as f64 / out_size as f64;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let max_len = (support.ceil() as usize) * 2 + 1;
    let count = range.len();
    let mut t = Taps {
        start: Vec::with_capacity(count),
        len: Vec::with_capacity(count),
        weights: vec![0.0; count * max_len],
        max_len,
    };
    let mut w = vec![0f64; max_len];
    for (row, i) in range.enumerate() {
        let center = scale * (i as f64 + 0.5);
        // `as i64` truncates toward zero, like static_cast<int64_t>.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64)
            .min(in_size as i64)
            .max(xmin as i64) as usize;
        let len = (xmax - xmin).min(max_len);
        let mut total = 0f64;
        for (j, wj) in w[..len].iter_mut().enumerate() {
            let x = (j as f64 + xmin as f64 - center + 0.5) * invscale;
            let v = (1.0 - x.abs()).max(0.0);
            *wj = v;
            total += v;
        }
        for (j, &wj) in w[..len].iter().enumerate() {
            t.weights[row * max_len + j] = if total != 0.0 {
                (wj / total) as f32
            } else {
                wj as f32
            };
        }
        t.start.push(xmin);
        t.len.push(len);
    }
    t
}

/// Separable antialiased bilinear resize (width pass, then height pass, f32 throughout),
/// matching `F.interpolate(mode="bilinear", antialias=True, align_corners=False)`.
pub fn resize(src: &Planar, out_h: usize, out_w: usize) -> Planar {
    resize_window(src, out_h, out_w, 0..out_h, 0..out_w)
}

/// The window `ys x xs` of `src` resized to `out_h x out_w`, computing only that window (each
/// output pixel depends only on its own taps), so a center crop of an extreme upscale costs no
/// more than the crop.
pub fn resize_window(
    src: &Planar,
    out_h: usize,
    out_w: usize,
    ys: std::ops::Range<usize>,
    xs: std::ops::Range<usize>,
) -> Planar {
    let (c, h, w) = (src.channels, src.height, src.width);
    let (wy, wx) = (ys.len(), xs.len());
    // width pass over every source row, only the columns in `xs`
    let horizontal: Vec<f32> = if out_w != w || xs != (0..w) {
        let t = taps_range(w, out_w, xs.clone());
        let mut out = vec![0f32; c * h * wx];
        for (row_in, row_out) in src.data.chunks_exact(w).zip(out.chunks_exact_mut(wx)) {
            for (x, o) in row_out.iter_mut().enumerate() {
                let ws = &t.weights[x * t.max_len..x * t.max_len + t.len[x]];
                let s = &row_in[t.start[x]..t.start[x] + t.len[x]];
                let mut acc = 0f32;
                for (a, b) in ws.iter().zip(s) {
                    acc += a * b;
                }
                *o = acc;
            }
        }
        out
    } else {
        src.data.clone()
    };
    if out_h == h && ys == (0..h) {
        return Planar {
            channels: c,
            height: h,
            width: wx,
            data: horizontal,
        };
    }
    let t = taps_range(h, out_h, ys);
    let mut out = vec![0f32; c * wy * wx];
    for ch in 0..c {
        let plane = &horizontal[ch * h * wx..(ch + 1) * h * wx];
        let oplane = &mut out[ch * wy * wx..(ch + 1) * wy * wx];
        for y in 0..wy {
            let ws = &t.weights[y * t.max_len..y * t.max_len + t.len[y]];
            let orow = &mut oplane[y * wx..(y + 1) * wx];
            for (j, wj) in ws.iter().enumerate() {
                let srow = &plane[(t.start[y] + j) * wx..(t.start[y] + j + 1) * wx];
                for (o, &v) in orow.iter_mut().zip(srow) {
                    *o += wj * v;
                }
            }
        }
    }
    Planar {
        channels: c,
        height: wy,
        width: wx,
        data: out,
    }
}

/// Output size when the shorter side becomes `size` (torchvision `Resize(int)`).
pub fn shorter_side_size(h: usize, w: usize, size: usize) -> (usize, usize) {
    if w <= h {
        (((size * h) as f64 / w as f64) as usize, size)
    } else {
        (size, ((size * w) as f64 / h as f64) as usize)
    }
}

/// Center crop to `(ch, cw)` at offset `(size - crop) // 2`; a crop larger than the image pads
/// with zeros, `(crop - size) // 2` before the image (the convention of the Python reference,
/// `shiftserve_train.features.center_crop`).
pub fn center_crop(src: &Planar, ch: usize, cw: usize) -> Planar {
    let (c, h, w) = (src.channels, src.height, src.width);
    // offset of the crop window in source coordinates (may be negative when padding)
    let off = |size: usize, crop: usize| -> isize {
        if crop > size {
            -(((crop - size) / 2) as isize)
        } else {
            ((size - crop) / 2) as isize
        }
    };
    let (oy, ox) = (off(h, ch), off(w, cw));
    let mut out = vec![0f32; c * ch * cw];
    for k in 0..c {
        for y in 0..ch {
            let sy = y as isize + oy;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            for x in 0..cw {
                let sx = x as isize + ox;
                if sx < 0 || sx >= w as isize {
                    continue;
                }
                out[(k * ch + y) * cw + x] = src.data[(k * h + sy as usize) * w + sx as usize];
            }
        }
    }
    Planar {
        channels: c,
        height: ch,
        width: cw,
        data: out,
    }
}

/// Luma (not composited; exactly the gray value where R = G = B) and alpha in [0, 1].
pub fn luma_alpha(img: &DynamicImage) -> (Vec<f32>, Vec<f32>) {
    let color = img.color();
    let eight_bit = color.bytes_per_pixel() / color.channel_count() == 1;
    if !color.has_color() {
        if eight_bit {
            img.to_luma_alpha8()
                .pixels()
                .map(|p| (p.0[0] as f32, p.0[1] as f32 / 255.0))
                .unzip()
        } else {
            img.to_luma_alpha32f()
                .pixels()
                .map(|p| (p.0[0] * 255.0, p.0[1]))
                .unzip()
        }
    } else {
        let luma = |r: f32, g: f32, b: f32| {
            if r == g && g == b {
                r
            } else {
                0.299 * r + 0.587 * g + 0.114 * b
            }
        };
        if eight_bit {
            img.to_rgba8()
                .pixels()
                .map(|p| {
                    let [r, g, b, a] = p.0;
                    (luma(r as f32, g as f32, b as f32), a as f32 / 255.0)
                })
                .unzip()
        } else {
            img.to_rgba32f()
                .pixels()
                .map(|p| {
                    let [r, g, b, a] = p.0;
                    (luma(r * 255.0, g * 255.0, b * 255.0), a)
                })
                .unzip()
        }
    }
}

/// Indices of the outermost ring of pixels (each once).
fn ring(h: usize, w: usize) -> impl Iterator<Item = usize> {
    (0..h).flat_map(move |y| {
        let edge_row = y == 0 || y + 1 == h;
        (0..w)
            .filter(move |&x| edge_row || x == 0 || x + 1 == w)
            .map(move |x| y * w + x)
    })
}

/// The element at index `(n - 1) / 2` of the sorted values (no averaging). `v` is not empty.
fn lower_median(mut v: Vec<f32>) -> f32 {
    let k = (v.len() - 1) / 2;
    *v.select_nth_unstable_by(k, f32::total_cmp).1
}

/// `background: "auto"` (docs/format.md): luma plane `[h*w]` in 0..=255 with the object light on
/// a background of 0. Alpha over the picture's own background (the lower median of the opaque
/// ring pixels when they are at least half of the ring; for a cut-out on a transparent border,
/// white if the alpha-weighted mean luma is below 127.5, else black); polarity from the lower
/// median `b0` of the composited ring (inverted when `b0 > 127.5`); level
/// `clamp((v - b) * 255 / (255 - b), 0, 255)`.
pub fn normalize_background(luma: &[f32], alpha: &[f32], h: usize, w: usize) -> Vec<f32> {
    let mut v = luma.to_vec();
    if alpha.iter().any(|&a| a < 1.0) {
        let ring_len = ring(h, w).count();
        let opaque: Vec<f32> = ring(h, w)
            .filter(|&i| alpha[i] >= 1.0)
            .map(|i| luma[i])
            .collect();
        let bgc = if 2 * opaque.len() >= ring_len {
            lower_median(opaque)
        } else {
            let (mut sum_la, mut sum_a) = (0f64, 0f64);
            for (&l, &a) in luma.iter().zip(alpha) {
                sum_la += l as f64 * a as f64;
                sum_a += a as f64;
            }
            let mean = if sum_a > 0.0 { sum_la / sum_a } else { 255.0 };
            if mean < 127.5 {
                255.0
            } else {
                0.0
            }
        };
        for (x, &a) in v.iter_mut().zip(alpha) {
            if a < 1.0 {
                *x = *x * a + bgc * (1.0 - a);
            }
        }
    }
    let b0 = lower_median(ring(h, w).map(|i| v[i]).collect());
    let b = if b0 > 127.5 {
        for x in v.iter_mut() {
            *x = 255.0 - *x;
        }
        255.0 - b0
    } else {
        b0
    };
    let gain = 255.0 - b;
    for x in v.iter_mut() {
        *x = ((*x - b) * 255.0 / gain).clamp(0.0, 255.0);
    }
    v
}

/// Bounding box `(top, left, height, width)` of the pixels above `threshold`, counting a row
/// (column) when it holds at least `ceil(w / 100)` (`ceil(h / 100)`) of them; the whole plane
/// when none does.
pub fn object_box(z: &[f32], h: usize, w: usize, threshold: f32) -> (usize, usize, usize, usize) {
    let mut rows = vec![0usize; h];
    let mut cols = vec![0usize; w];
    for (y, row) in z.chunks_exact(w).enumerate() {
        for (x, &v) in row.iter().enumerate() {
            if v > threshold {
                rows[y] += 1;
                cols[x] += 1;
            }
        }
    }
    let span = |counts: &[usize], need: usize| {
        let first = counts.iter().position(|&c| c >= need)?;
        let last = counts.iter().rposition(|&c| c >= need)?;
        Some((first, last + 1 - first))
    };
    match (span(&rows, w.div_ceil(100)), span(&cols, h.div_ceil(100))) {
        (Some((top, bh)), Some((left, bw))) => (top, left, bh, bw),
        _ => (0, 0, h, w),
    }
}

/// Size of a `h x w` box once its longer side is `fit`: the shorter side is
/// `max(1, floor(fit * short / long + 1/2))`.
pub fn fit_size(h: usize, w: usize, fit: usize) -> (usize, usize) {
    if h >= w {
        (fit, ((2 * fit * w + h) / (2 * h)).max(1))
    } else {
        (((2 * fit * h + w) / (2 * w)).max(1), fit)
    }
}

/// `frame`: the object's box of `z` resized (antialiased bilinear, aspect kept) so that its
/// longer side is `frame.fit`, centred on a `crop` canvas of background (0) at offset
/// `((ch - h) / 2, (cw - w) / 2)`.
pub fn frame_object(
    z: &[f32],
    h: usize,
    w: usize,
    frame: &Frame,
    crop: (usize, usize),
) -> Vec<f32> {
    let (top, left, bh, bw) = object_box(z, h, w, frame.threshold);
    let mut data = Vec::with_capacity(bh * bw);
    for y in top..top + bh {
        data.extend_from_slice(&z[y * w + left..y * w + left + bw]);
    }
    let boxed = Planar {
        channels: 1,
        height: bh,
        width: bw,
        data,
    };
    let (nh, nw) = fit_size(bh, bw, frame.fit);
    let sized = if (nh, nw) != (bh, bw) {
        resize(&boxed, nh, nw)
    } else {
        boxed
    };
    let (ch, cw) = crop;
    let mut out = vec![0f32; ch * cw];
    let (oy, ox) = ((ch - nh) / 2, (cw - nw) / 2);
    for (y, row) in sized.data.chunks_exact(nw).enumerate() {
        let d = (oy + y) * cw + ox;
        out[d..d + nw].copy_from_slice(row);
    }
    out
}

/// Everything after decoding: channels, resize, crop, scale, invert, normalize.
pub fn featurize(img: &DynamicImage, spec: &ImageSpec) -> Vec<f32> {
    let planar = if spec.auto_background {
        let (h, w) = (img.height() as usize, img.width() as usize);
        let (luma, alpha) = luma_alpha(img);
        let z = normalize_background(&luma, &alpha, h, w);
        if let Some(frame) = &spec.frame {
            let mut out = frame_object(&z, h, w, frame, spec.crop);
            normalize(&mut out, spec);
            return out;
        }
        Planar {
            channels: 1,
            height: h,
            width: w,
            data: z,
        }
    } else {
        to_planar(img, spec.channels)
    };
    let (h, w) = (planar.height, planar.width);
    let (rh, rw) = match spec.resize {
        Some(s) => shorter_side_size(h, w, s),
        None => spec.crop,
    };
    let (rh, rw) = (rh.max(1), rw.max(1));
    let (ch, cw) = spec.crop;
    // Per axis: the window of the resized image that the crop keeps, and where it lands.
    let window = |size: usize, crop: usize| -> (std::ops::Range<usize>, usize) {
        if crop <= size {
            let off = (size - crop) / 2;
            (off..off + crop, 0)
        } else {
            (0..size, (crop - size) / 2)
        }
    };
    let (ys, dy) = window(rh, ch);
    let (xs, dx) = window(rw, cw);
    let kept = if (rh, rw) != (h, w) {
        resize_window(&planar, rh, rw, ys, xs)
    } else {
        let mut data = Vec::with_capacity(planar.channels * ys.len() * xs.len());
        for c in 0..planar.channels {
            for y in ys.clone() {
                let row = (c * h + y) * w;
                data.extend_from_slice(&planar.data[row + xs.start..row + xs.end]);
            }
        }
        Planar {
            channels: planar.channels,
            height: ys.len(),
            width: xs.len(),
            data,
        }
    };
    let cropped = if (kept.height, kept.width) == (ch, cw) {
        kept
    } else {
        let mut data = vec![0f32; kept.channels * ch * cw];
        for c in 0..kept.channels {
            for y in 0..kept.height {
                let src = &kept.data
                    [(c * kept.height + y) * kept.width..(c * kept.height + y + 1) * kept.width];
                let dst = ((c * ch) + dy + y) * cw + dx;
                data[dst..dst + kept.width].copy_from_slice(src);
            }
        }
        Planar {
            channels: kept.channels,
            height: ch,
            width: cw,
            data,
        }
    };
    let mut out = cropped.data;
    normalize(&mut out, spec);
    out
}

/// `x / 255`, `1 - x` if `invert`, `(x - mean[c]) / std[c]`, in place over `[C, crop]`.
fn normalize(out: &mut [f32], spec: &ImageSpec) {
    let plane = spec.crop.0 * spec.crop.1;
    for (c, chunk) in out.chunks_exact_mut(plane).enumerate() {
        let (m, s) = (spec.mean[c], spec.std[c]);
        for v in chunk.iter_mut() {
            let mut x = *v / 255.0;
            if spec.invert {
                x = 1.0 - x;
            }
            *v = (x - m) / s;
        }
    }
}

/// The whole image front end.
pub fn preprocess(
    spec: &ImageSpec,
    data: &[u8],
    media: Media,
    limits: &InputLimits,
) -> Result<Vec<f32>, ModelError> {
    let img = decode(data, media, limits.max_pixels)?;
    let out = featurize(&img, spec);
    if out.len() != spec.channels * spec.crop.0 * spec.crop.1 {
        return Err(internal(
            "image preprocessing produced a wrong-sized tensor",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planar(h: usize, w: usize, f: impl Fn(usize, usize) -> f32) -> Planar {
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                data.push(f(y, x));
            }
        }
        Planar {
            channels: 1,
            height: h,
            width: w,
            data,
        }
    }

    #[test]
    fn downscale_by_two_averages_pairs_with_triangle_weights() {
        // scale 2: support 2, taps at distance 0.5 and 1.5 -> weights 3/4, 1/4 (normalised: 3:3:1:1 / 8)
        let t = taps(8, 4);
        assert_eq!(t.start[1], 1);
        let w = &t.weights[t.max_len..t.max_len + t.len[1]];
        assert_eq!(w.len(), 4);
        let expect = [0.125, 0.375, 0.375, 0.125];
        for (a, b) in w.iter().zip(expect) {
            assert!((a - b).abs() < 1e-7, "{w:?}");
        }
        // edge: taps truncated and renormalised
        let w0 = &t.weights[..t.len[0]];
        assert_eq!(t.start[0], 0);
        let s: f32 = w0.iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
    }

    #[test]
    fn constant_image_stays_constant_and_ramp_stays_monotone() {
        let p = planar(37, 53, |_, _| 77.0);
        let r = resize(&p, 11, 16);
        assert!(r.data.iter().all(|&v| (v - 77.0).abs() < 1e-4));
        let ramp = planar(10, 40, |_, x| x as f32);
        let r = resize(&ramp, 10, 13);
        assert!(r.data[..13].windows(2).all(|p| p[0] < p[1]));
        // upscale: interior samples interpolate linearly
        let small = planar(1, 4, |_, x| (x * 10) as f32);
        let up = resize(&small, 1, 8);
        // output x=2 has center 1.25 -> between inputs 0 and 1 (at 0.5 and 1.5): 0.75*10 + 0.25*0
        assert!((up.data[2] - 7.5).abs() < 1e-5, "{:?}", up.data);
    }

    #[test]
    fn a_window_equals_the_same_slice_of_the_full_resize() {
        let p = planar(23, 31, |y, x| ((y * 31 + x) % 17) as f32 * 3.0);
        for (oh, ow) in [(11, 13), (40, 9), (23, 64)] {
            let full = resize(&p, oh, ow);
            let (ys, xs) = (oh / 4..oh / 4 + oh / 2, 1..ow - 1);
            let win = resize_window(&p, oh, ow, ys.clone(), xs.clone());
            for (wy, y) in ys.enumerate() {
                for (wx, x) in xs.clone().enumerate() {
                    assert_eq!(win.data[wy * win.width + wx], full.data[y * ow + x]);
                }
            }
        }
    }

    #[test]
    fn extreme_aspect_ratios_only_compute_the_crop() {
        // 1 x 4000 strip, shorter side to 224: the resized image would be 224 x 896000 pixels;
        // only the 224 x 224 crop is computed.
        let img = DynamicImage::ImageLuma8(image::GrayImage::from_fn(4000, 1, |x, _| {
            image::Luma([(x % 256) as u8])
        }));
        let spec = ImageSpec {
            channels: 1,
            resize: Some(224),
            crop: (224, 224),
            invert: false,
            mean: vec![0.0],
            std: vec![1.0],
            auto_background: false,
            frame: None,
        };
        let out = featurize(&img, &spec);
        assert_eq!(out.len(), 224 * 224);
        assert!(out.iter().all(|v| v.is_finite() && *v >= 0.0 && *v <= 1.0));
    }

    fn opaque(n: usize) -> Vec<f32> {
        vec![1.0; n]
    }

    #[test]
    fn light_background_is_inverted_and_levelled() {
        let (h, w) = (6, 7);
        let mut img = vec![235f32; h * w];
        for y in 2..4 {
            for x in 2..5 {
                img[y * w + x] = 35.0; // dark object on off-white
            }
        }
        let z = normalize_background(&img, &opaque(h * w), h, w);
        assert_eq!((z[0], z[w + 3]), (0.0, 0.0));
        // 255 - 35 = 220 on a background of 20: (220 - 20) * 255 / 235
        assert!((z[2 * w + 2] - 200.0 * 255.0 / 235.0).abs() < 1e-4);
        let inverted: Vec<f32> = img.iter().map(|v| 255.0 - v).collect();
        assert_eq!(normalize_background(&inverted, &opaque(h * w), h, w), z);
    }

    #[test]
    fn lower_median_of_the_ring_decides_the_polarity() {
        let mut img = vec![0f32; 25];
        img[..5].fill(255.0); // 5 of 16 ring pixels light: still a dark background
        assert_eq!(normalize_background(&img, &opaque(25), 5, 5), img);
        for y in 0..5 {
            img[y * 5] = 255.0;
            img[y * 5 + 4] = 255.0;
        } // 13 of 16: light background, inverted
        let z = normalize_background(&img, &opaque(25), 5, 5);
        assert_eq!(z[..5].iter().sum::<f32>(), 0.0);
        assert_eq!(z[12], 255.0);
    }

    #[test]
    fn alpha_is_composited_over_the_pictures_own_background() {
        let mut luma = vec![240f32; 36];
        let mut alpha = vec![1f32; 36];
        for i in [14, 15, 20, 21] {
            luma[i] = 40.0;
            alpha[i] = 0.5; // 40 / 2 + 240 / 2 = 140 on an off-white border
        }
        let z = normalize_background(&luma, &alpha, 6, 6);
        assert!((z[14] - (255.0 - 140.0 - 15.0) * 255.0 / 240.0).abs() < 1e-4);
        assert_eq!(z[0], 0.0);
        // a cut-out on a transparent border: a dark object goes over white, a light one over black
        let mut cut_l = vec![0f32; 36];
        let mut cut_a = vec![0f32; 36];
        for i in [14, 15, 20, 21] {
            cut_l[i] = 30.0;
            cut_a[i] = 1.0;
        }
        let z = normalize_background(&cut_l, &cut_a, 6, 6);
        assert_eq!((z[0], z[14]), (0.0, 225.0));
        for i in [14, 15, 20, 21] {
            cut_l[i] = 220.0;
        }
        let z = normalize_background(&cut_l, &cut_a, 6, 6);
        assert_eq!((z[0], z[14]), (0.0, 220.0));
    }

    #[test]
    fn object_box_ignores_strays_and_fit_size_rounds_half_up() {
        let (h, w) = (300, 200);
        let mut z = vec![0f32; h * w];
        for y in 50..150 {
            for x in 20..60 {
                z[y * w + x] = 100.0;
            }
        }
        z[h * w - 1] = 255.0; // a stray pixel: fewer than ceil(200 / 100) = 2 in its row
        assert_eq!(object_box(&z, h, w, 24.0), (50, 20, 100, 40));
        assert_eq!(object_box(&[0.0; 16], 4, 4, 24.0), (0, 0, 4, 4));
        assert_eq!(fit_size(100, 40, 28), (28, 11));
        assert_eq!(fit_size(40, 100, 28), (11, 28));
        assert_eq!(fit_size(8, 3, 28), (28, 11)); // 10.5 rounds up
        assert_eq!(fit_size(1000, 1, 28), (28, 1));
    }

    #[test]
    fn frame_centres_the_box_on_the_canvas() {
        let (h, w) = (40, 60);
        let mut z = vec![0f32; h * w];
        for y in 10..30 {
            for x in 5..15 {
                z[y * w + x] = 200.0; // a 20 x 10 box
            }
        }
        let frame = Frame {
            fit: 10,
            threshold: 24.0,
        };
        let out = frame_object(&z, h, w, &frame, (12, 14));
        // 10 x 5 at ((12 - 10) / 2, (14 - 5) / 2)
        for y in 0..12 {
            for x in 0..14 {
                let inside = (1..11).contains(&y) && (4..9).contains(&x);
                let v = out[y * 14 + x];
                assert!(
                    if inside {
                        (v - 200.0).abs() < 1e-3
                    } else {
                        v == 0.0
                    },
                    "({y}, {x}) = {v}"
                );
            }
        }
    }

    #[test]
    fn crop_offsets_follow_the_python_reference() {
        let p = planar(5, 5, |y, x| (y * 5 + x) as f32);
        let c = center_crop(&p, 2, 2); // (5-2)//2 = 1
        assert_eq!(c.data, vec![6.0, 7.0, 11.0, 12.0]);
        let c = center_crop(&p, 3, 3); // offset 1
        assert_eq!(c.data[0], 6.0);
        let padded = center_crop(&planar(2, 2, |_, _| 1.0), 4, 5);
        // pad top (4-2)//2 = 1, left (5-2)//2 = 1
        assert_eq!(padded.data[5 + 1], 1.0);
        assert_eq!(padded.data[0], 0.0);
        assert_eq!(padded.data.iter().filter(|&&v| v == 1.0).count(), 4);
        assert_eq!(shorter_side_size(480, 640, 256), (256, 341));
        assert_eq!(shorter_side_size(640, 480, 256), (341, 256));
    }
}

// imgclf's preprocessing in the browser: the same pixels `imgclf predict` gives the model.
//
// Python prepares an image with Pillow (imgclf.data.preprocess.prepare_image after
// imgclf.data.decode.decode_image): decode, box-reduce a large image (JPEG: libjpeg's DCT scaling,
// "draft"), turn EXIF orientation upright, convert to RGB or grey, then resize by the model's policy
// (stretch, crop or pad) with its interpolation and reducing_gap=3. This module does the same steps
// on the pixels the browser decoded, in the same integer arithmetic as Pillow's C code
// (libImaging/Resample.c, Reduce.c, Convert.c, Geometry.c), so that a PNG, or a JPEG small enough
// for no DCT scaling, gives the model exactly Python's input. Where the browser cannot do as
// Pillow does, the difference is named in `prepare`'s `notes`:
//   - a JPEG at least twice the model's size on both sides: libjpeg decodes it scaled by 1/2, 1/4 or
//     1/8 in the DCT domain; here it is decoded whole and box-averaged by the same factor;
//   - transparency: the browser hands over pixels premultiplied by alpha and back, so a
//     translucent pixel can differ by a level before it is laid over black.
//
// Every function takes and returns {width, height, bands, data: Uint8Array} (bands 1 or 3, the
// pixels row by row, the bands of a pixel side by side).

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS;
const HALF = 2 ** (PRECISION_BITS - 1);

function sinc(x) {
  if (x === 0.0) return 1.0;
  x *= Math.PI;
  return Math.sin(x) / x;
}

// Pillow's filters (Resample.c) by the names imgclf's preprocessing spec uses, with their support
export const FILTERS = {
  box: { support: 0.5, weight: (x) => (x > -0.5 && x <= 0.5 ? 1.0 : 0.0) },
  bilinear: {
    support: 1.0,
    weight: (x) => {
      x = Math.abs(x);
      return x < 1.0 ? 1.0 - x : 0.0;
    },
  },
  hamming: {
    support: 1.0,
    weight: (x) => {
      x = Math.abs(x);
      if (x === 0.0) return 1.0;
      if (x >= 1.0) return 0.0;
      x *= Math.PI;
      // 0.54f and 0.46f are single-precision constants in Pillow's C code
      return (Math.sin(x) / x) * (Math.fround(0.54) + Math.fround(0.46) * Math.cos(x));
    },
  },
  bicubic: {
    support: 2.0,
    weight: (x) => {
      const a = -0.5;
      x = Math.abs(x);
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    },
  },
  lanczos: { support: 3.0, weight: (x) => (x >= -3.0 && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0) },
};

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc: per output pixel, the first input pixel, how
 * many, and their fixed-point weights. `in0`, `in1` are single-precision, as in Pillow. */
function coefficients(inSize, in0, in1, outSize, filter) {
  in0 = Math.fround(in0);
  in1 = Math.fround(in1);
  const scale = Math.fround(in1 - in0) / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * ksize);
  const inverse = 1.0 / filterscale;
  const row = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let total = 0.0;
    for (let x = 0; x < xmax; x++) {
      const w = filter.weight((x + xmin - center + 0.5) * inverse);
      row[x] = w;
      total += w;
    }
    for (let x = 0; x < ksize; x++) {
      let w = x < xmax ? row[x] : 0.0;
      if (x < xmax && total !== 0.0) w /= total;
      weights[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * ONE) : Math.trunc(0.5 + w * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, weights };
}

function clip8(sum) {
  const value = Math.floor(sum / ONE);
  return value < 0 ? 0 : value > 255 ? 255 : value;
}

function verticalPass(image, height, { ksize, bounds, weights }, offset) {
  const stride = image.width * image.bands;
  const out = new Uint8Array(stride * height);
  for (let yy = 0; yy < height; yy++) {
    const ymin = bounds[yy * 2] - offset;
    const count = bounds[yy * 2 + 1];
    const k = yy * ksize;
    for (let i = 0; i < stride; i++) {
      let sum = HALF;
      for (let y = 0; y < count; y++) sum += image.data[(y + ymin) * stride + i] * weights[k + y];
      out[yy * stride + i] = clip8(sum);
    }
  }
  return { width: image.width, height, bands: image.bands, data: out };
}

function horizontalPass(image, width, first, rows, { ksize, bounds, weights }) {
  const { bands } = image;
  const out = new Uint8Array(width * rows * bands);
  for (let y = 0; y < rows; y++) {
    const line = (y + first) * image.width * bands;
    for (let xx = 0; xx < width; xx++) {
      const xmin = bounds[xx * 2];
      const count = bounds[xx * 2 + 1];
      const k = xx * ksize;
      for (let b = 0; b < bands; b++) {
        let sum = HALF;
        for (let x = 0; x < count; x++) sum += image.data[line + (x + xmin) * bands + b] * weights[k + x];
        out[(y * width + xx) * bands + b] = clip8(sum);
      }
    }
  }
  return { width, height: rows, bands, data: out };
}

/** Pillow's ImagingResample (8 bits per band), each pass rounded to 8 bits; box is [x0, y0, x1, y1].
 * Pillow 13 runs the vertical pass first when the height shrinks by more than twice what the width
 * shrinks by, the horizontal pass first otherwise (Pillow 12 always horizontal first). */
function resample(image, width, height, filter, box) {
  const needHorizontal = width !== image.width || box[0] !== 0 || box[2] !== width;
  const needVertical = height !== image.height || box[1] !== 0 || box[3] !== height;
  const horizontalFirst = !(image.height - height > 0 && image.height - height > (image.width - width) * 2);
  const vertical = coefficients(image.height, box[1], box[3], height, filter);
  const horizontal = needHorizontal ? coefficients(image.width, box[0], box[2], width, filter) : null;
  let out = image;
  if (horizontalFirst) {
    let offset = 0;
    if (needHorizontal) {
      const first = vertical.bounds[0];
      const last = vertical.bounds[height * 2 - 2] + vertical.bounds[height * 2 - 1];
      out = horizontalPass(out, width, first, last - first, horizontal);
      offset = first;
    }
    if (needVertical) out = verticalPass(out, height, vertical, offset);
  } else {
    if (needVertical) out = verticalPass(out, height, vertical, 0);
    if (needHorizontal) out = horizontalPass(out, width, 0, height, horizontal);
  }
  return out === image ? { ...image, data: image.data.slice() } : out;
}

/** Pillow's division_UINT32(n, 8): 2^32 / (256 n) in single precision, truncated. */
function multiplier(n) {
  return Math.trunc(Math.fround(2 ** 32 / Math.fround(256 * n)));
}

/** Pillow's Image.reduce((fx, fy), box): each block of fx × fy pixels averaged, the blocks cut by the
 * right and bottom edges averaged over the pixels they hold; box is [x0, y0, x1, y1]. */
export function reduce(image, fx, fy, box = [0, 0, image.width, image.height]) {
  const [x0, y0] = box;
  const boxWidth = box[2] - x0;
  const boxHeight = box[3] - y0;
  const width = Math.ceil(boxWidth / fx);
  const height = Math.ceil(boxHeight / fy);
  const { bands } = image;
  const out = new Uint8Array(width * height * bands);
  for (let y = 0; y < height; y++) {
    const top = y0 + y * fy;
    const rows = Math.min(fy, y0 + boxHeight - top);
    for (let x = 0; x < width; x++) {
      const left = x0 + x * fx;
      const columns = Math.min(fx, x0 + boxWidth - left);
      const n = rows * columns;
      const scale = multiplier(n);
      for (let b = 0; b < bands; b++) {
        let sum = Math.trunc(n / 2);
        for (let yy = top; yy < top + rows; yy++) {
          const line = yy * image.width;
          for (let xx = left; xx < left + columns; xx++) sum += image.data[(line + xx) * bands + b];
        }
        out[(y * width + x) * bands + b] = Math.floor((sum * scale) / 2 ** 24);
      }
    }
  }
  return { width, height, bands, data: out };
}

/** Pillow's nearest-neighbour resize (an affine scale in Geometry.c, positions added up as there). */
function nearest(image, width, height) {
  const { bands } = image;
  const ax = image.width / width;
  const ay = image.height / height;
  const columns = new Int32Array(width);
  let xo = ax * 0.5;
  for (let x = 0; x < width; x++, xo += ax) columns[x] = xo < 0 ? -1 : Math.trunc(xo);
  const out = new Uint8Array(width * height * bands);
  let yo = ay * 0.5;
  for (let y = 0; y < height; y++, yo += ay) {
    const yi = yo < 0 ? -1 : Math.trunc(yo);
    for (let x = 0; x < width; x++) {
      for (let b = 0; b < bands; b++) {
        out[(y * width + x) * bands + b] = image.data[(yi * image.width + columns[x]) * bands + b];
      }
    }
  }
  return { width, height, bands, data: out };
}

/** Pillow's Image.resize(size, resample, reducing_gap=3.0), as imgclf calls it. */
export function resize(image, width, height, interpolation) {
  if (image.width === width && image.height === height) return image;
  if (interpolation === "nearest") return nearest(image, width, height);
  const filter = FILTERS[interpolation];
  if (!filter) throw new Error(`unknown interpolation ${interpolation}`);
  let box = [0, 0, image.width, image.height];
  const gap = 3.0;
  const fx = Math.trunc(image.width / width / gap) || 1;
  const fy = Math.trunc(image.height / height / gap) || 1;
  if (fx > 1 || fy > 1) {
    // Image._get_safe_box: the box widened by the filter's reach
    const reach = filter.support - 0.5;
    const sx = reach * (image.width / width);
    const sy = reach * (image.height / height);
    const safe = [
      Math.max(0, Math.trunc(box[0] - sx)),
      Math.max(0, Math.trunc(box[1] - sy)),
      Math.min(image.width, Math.ceil(box[2] + sx)),
      Math.min(image.height, Math.ceil(box[3] + sy)),
    ];
    image = reduce(image, fx, fy, safe);
    box = [
      (box[0] - safe[0]) / fx,
      (box[1] - safe[1]) / fy,
      (box[2] - safe[0]) / fx,
      (box[3] - safe[1]) / fy,
    ];
  }
  const whole = Number.isInteger(box[0]) && Number.isInteger(box[1]);
  if (whole && box[2] - box[0] === width && box[3] - box[1] === height) {
    return crop(image, box[0], box[1], width, height);
  }
  return resample(image, width, height, filter, box);
}

export function crop(image, left, top, width, height) {
  const { bands } = image;
  const out = new Uint8Array(width * height * bands);
  for (let y = 0; y < height; y++) {
    const start = ((top + y) * image.width + left) * bands;
    out.set(image.data.subarray(start, start + width * bands), y * width * bands);
  }
  return { width, height, bands, data: out };
}

/** Python's round(): halves go to the even neighbour. */
function roundHalfEven(value) {
  const floor = Math.floor(value);
  const rest = value - floor;
  if (rest > 0.5) return floor + 1;
  if (rest < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** imgclf.data.preprocess.resize_image: the model's resize policy. */
export function resizeBySpec(image, spec) {
  const { width, height } = spec;
  if (image.width === width && image.height === height) return image;
  if (spec.resize === "stretch") return resize(image, width, height, spec.interpolation);
  if (spec.resize === "crop") {
    const scale = Math.max(width / image.width, height / image.height);
    const sw = Math.max(width, roundHalfEven(image.width * scale));
    const sh = Math.max(height, roundHalfEven(image.height * scale));
    const scaled = resize(image, sw, sh, spec.interpolation);
    return crop(scaled, Math.floor((sw - width) / 2), Math.floor((sh - height) / 2), width, height);
  }
  // pad: fit inside, centred on black
  const scale = Math.min(width / image.width, height / image.height);
  const sw = Math.max(1, roundHalfEven(image.width * scale));
  const sh = Math.max(1, roundHalfEven(image.height * scale));
  const scaled = resize(image, sw, sh, spec.interpolation);
  const { bands } = image;
  const out = new Uint8Array(width * height * bands);
  const left = Math.floor((width - sw) / 2);
  const top = Math.floor((height - sh) / 2);
  for (let y = 0; y < sh; y++) {
    out.set(scaled.data.subarray(y * sw * bands, (y + 1) * sw * bands), ((top + y) * width + left) * bands);
  }
  return { width, height, bands, data: out };
}

/** RGBA pixels from a canvas → RGB over black (Pillow's paste with the alpha as mask). */
export function rgbOverBlack(rgba, width, height) {
  const data = new Uint8Array(width * height * 3);
  for (let i = 0, o = 0; i < rgba.length; i += 4, o += 3) {
    const alpha = rgba[i + 3];
    for (let b = 0; b < 3; b++) {
      const value = rgba[i + b];
      if (alpha === 255) data[o + b] = value;
      else {
        const t = value * alpha + 128;
        data[o + b] = (t + (t >> 8)) >> 8;
      }
    }
  }
  return { width, height, bands: 3, data };
}

/** Pillow's RGB → L (ITU-R 601-2 luma, Convert.c's L24). */
export function toGrey(image) {
  const data = new Uint8Array(image.width * image.height);
  for (let i = 0, o = 0; o < data.length; i += 3, o++) {
    data[o] = (image.data[i] * 19595 + image.data[i + 1] * 38470 + image.data[i + 2] * 7471 + 0x8000) >> 16;
  }
  return { width: image.width, height: image.height, bands: 1, data };
}

/** What the file's first bytes say: JPEG (with its stored size, before EXIF orientation) or not. */
export function jpegSize(bytes) {
  if (bytes.length < 4 || bytes[0] !== 0xff || bytes[1] !== 0xd8) return null;
  let at = 2;
  while (at + 9 < bytes.length) {
    if (bytes[at] !== 0xff) return null;
    const marker = bytes[at + 1];
    if (marker === 0xff) {
      at += 1;
      continue;
    }
    const length = (bytes[at + 2] << 8) | bytes[at + 3];
    // SOF0–SOF15 but DHT (C4), JPG (C8) and DAC (CC)
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      return { height: (bytes[at + 5] << 8) | bytes[at + 6], width: (bytes[at + 7] << 8) | bytes[at + 8] };
    }
    at += 2 + length;
  }
  return null;
}

/** A PNG's size from its header (IHDR), or null. */
export function pngSize(bytes) {
  const signature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (bytes.length < 24 || signature.some((value, i) => bytes[i] !== value)) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { width: view.getUint32(16), height: view.getUint32(20) };
}

/**
 * The model's input for one decoded image: Float32Array C×H×W of pixel / 255.
 *
 * rgba: the upright pixels the browser decoded (Uint8ClampedArray, width × height × 4);
 * stored: the JPEG's stored size ({width, height}) or null for other formats;
 * spec: the model's preprocessing (imgclf.preprocessing).
 * Returns {input, notes}: notes name the steps that cannot match Python to the last level.
 */
export function prepare(rgba, width, height, stored, spec) {
  const notes = [];
  let translucent = false;
  for (let i = 3; i < rgba.length; i += 4) {
    if (rgba[i] !== 255) {
      translucent = true;
      break;
    }
  }
  if (translucent) notes.push("transparency: the browser premultiplies alpha, so translucent pixels can differ by a level");
  let image = rgbOverBlack(rgba, width, height);
  if (stored) {
    // libjpeg's DCT scaling by the largest of 1/8, 1/4, 1/2 that keeps the model's size (Pillow's draft)
    const scale = Math.min(Math.floor(stored.width / spec.width), Math.floor(stored.height / spec.height));
    const factor = [8, 4, 2, 1].find((s) => scale >= s);
    if (factor > 1) {
      image = reduce(image, factor, factor);
      notes.push(`JPEG decoded at 1/${factor} size: libjpeg scales in the DCT domain, the browser box-averages`);
    }
  } else {
    // imgclf.data.decode.reduce_for
    const factor = Math.min(Math.floor(width / Math.max(1, spec.width)), Math.floor(height / Math.max(1, spec.height)));
    if (factor >= 2) image = reduce(image, factor, factor);
  }
  if (spec.channels === 1) image = toGrey(image);
  image = resizeBySpec(image, spec);
  const { bands } = image;
  const plane = spec.width * spec.height;
  const input = new Float32Array(plane * bands);
  for (let i = 0; i < plane; i++) {
    for (let b = 0; b < bands; b++) input[b * plane + i] = image.data[i * bands + b] / 255;
  }
  return { input, notes };
}

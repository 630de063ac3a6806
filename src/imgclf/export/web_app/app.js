// The phone app's page: loads model.json and the model into ONNX Runtime Web (WebAssembly), then
// classifies photos from the camera or the file picker on the phone itself.
//
// Test contract (also for users' own pages):
//   await window.imgclf.ready            → resolves once the model is loaded (rejects with the reason)
//   await window.imgclf.predict(blob)    → the top-k, [{class, name, probability}, ...], best first;
//                                          the first carries "unknown": true (and "reason") where the
//                                          model's unknown rule answers unknown
//   await window.imgclf.input(blob)      → the model's input for the image, as imgclf predict makes it:
//                                          {data: [C×H×W values 0–1], shape, notes} (notes: the steps
//                                          that cannot match Python to the last level, see preprocess.js)
//   window.imgclf.info                   → what runs: threads, cross-origin isolation, the model file
import * as ort from "./vendor/onnxruntime-web/ort.wasm.min.mjs";
import { jpegSize, pngSize, prepare } from "./preprocess.js";

const MAX_PIXELS = 100_000_000; // a photo larger than this is refused, not decoded
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// the token `imgclf serve` asks for: from the address (then kept, and dropped from the address bar)
let token = params.get("token");
try {
  if (token) localStorage.setItem("imgclf-token", token);
  else token = localStorage.getItem("imgclf-token");
} catch {
  // storage refused (private mode): the token lives as long as the page
}
if (params.has("token")) {
  params.delete("token");
  history.replaceState(null, "", location.pathname + (params.size ? `?${params}` : ""));
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function fetchChecked(path) {
  const response = await fetch(path, token ? { headers: { Authorization: `Bearer ${token}` } } : {});
  if (!response.ok) {
    const hint = response.status === 401 || response.status === 403 ? " (open the address with its token)" : "";
    throw new Error(`cannot load ${path}: HTTP ${response.status}${hint}`);
  }
  return response;
}

function threadsToUse() {
  if (!self.crossOriginIsolated) return 1; // threads need COOP/COEP (the service worker adds them)
  const asked = Number.parseInt(params.get("threads") ?? "", 10);
  if (asked > 0) return asked;
  return Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1));
}

const info = { threads: 1, crossOriginIsolated: self.crossOriginIsolated, model: null, runtime: null };
let config = null;
let session = null;

async function load() {
  if (typeof WebAssembly !== "object" || typeof WebAssembly.instantiate !== "function") {
    throw new Error("this browser cannot run WebAssembly, which the model needs: open the app in a current Chrome, Safari, Firefox or Edge");
  }
  config = await (await fetchChecked("model.json")).json();
  document.title = config.name;
  $("title").textContent = config.name;
  const bytes = new Uint8Array(await (await fetchChecked(config.model)).arrayBuffer());
  info.threads = threadsToUse();
  ort.env.wasm.numThreads = info.threads;
  ort.env.wasm.wasmPaths = new URL("vendor/onnxruntime-web/", location.href).href;
  ort.env.logLevel = "error";
  session = await ort.InferenceSession.create(bytes, {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "all",
  });
  info.model = `${config.model} (${(config.model_bytes / 1e6).toFixed(1)} MB, ${config.quantization.startsWith("int8") ? "int8" : "float"})`;
  info.runtime = `ONNX Runtime Web ${config.runtime.version}, ${info.threads} thread${info.threads > 1 ? "s" : ""}`;
  $("about").textContent = `${config.classes.length} classes · ${info.model} · ${info.runtime} · runs on this device; no photo leaves it`;
  return config;
}

function tooLarge(width, height) {
  return new Error(`image too large: ${width}×${height} pixels (at most ${MAX_PIXELS / 1e6} million)`);
}

async function decode(blob) {
  const head = new Uint8Array(await blob.slice(0, 65536).arrayBuffer());
  // a size its header gives is checked before anything is decoded (decompression bombs)
  const declared = jpegSize(head) ?? pngSize(head);
  if (declared && declared.width * declared.height > MAX_PIXELS) throw tooLarge(declared.width, declared.height);
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, {
      imageOrientation: "from-image",
      premultiplyAlpha: "none",
      colorSpaceConversion: "none",
    });
  } catch {
    throw new Error(`this browser cannot decode this file as an image (${blob.type || "unknown type"})`);
  }
  const { width, height } = bitmap;
  if (width * height > MAX_PIXELS) {
    bitmap.close();
    throw tooLarge(width, height);
  }
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { willReadFrequently: true, colorSpace: "srgb" });
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  return { rgba: context.getImageData(0, 0, width, height).data, width, height, stored: jpegSize(head) };
}

function answer(probabilities, likeness) {
  const order = Array.from(probabilities.keys()).sort((a, b) => probabilities[b] - probabilities[a]);
  const top = order.slice(0, config.top_k).map((index) => ({
    class: config.classes[index],
    name: config.display_names[index],
    probability: probabilities[index],
  }));
  if (config.task === "multi-label") {
    for (const entry of top) entry.present = entry.probability >= config.thresholds[entry.class];
    return top;
  }
  const rule = config.unknown;
  if (rule) {
    let reason = null;
    if (likeness && rule.similarity != null && likeness.similarity < rule.similarity) {
      reason = `unlike the training images (similarity ${likeness.similarity.toFixed(3)} < ${rule.similarity.toFixed(3)})`;
    } else if (likeness && rule.distance != null && likeness.distance > rule.distance) {
      reason = `unlike the training images (distance ${likeness.distance.toPrecision(4)} > ${rule.distance.toPrecision(4)})`;
    } else if (top[0].probability < rule.confidence) {
      reason = `confidence ${top[0].probability.toFixed(4)} < threshold ${rule.confidence.toFixed(4)}`;
    }
    if (reason) Object.assign(top[0], { unknown: true, reason });
  }
  return top;
}

/** The model's input for a photo, as imgclf predict makes it, and what each step took. */
async function modelInput(blob) {
  await ready;
  const started = performance.now();
  const image = await decode(blob);
  const decoded = performance.now();
  const spec = config.preprocessing;
  const { input, notes } = prepare(image.rgba, image.width, image.height, image.stored, spec);
  const ms = { decode: decoded - started, prepare: performance.now() - decoded };
  return { image, spec, input, notes, ms };
}

async function input(blob) {
  const { spec, input: data, notes } = await modelInput(blob);
  return { data: Array.from(data), shape: [spec.channels, spec.height, spec.width], notes };
}

async function predict(blob) {
  const { image, spec, input, notes, ms } = await modelInput(blob);
  const prepared = performance.now();
  const tensor = new ort.Tensor("float32", input, [1, spec.channels, spec.height, spec.width]);
  const outputs = await session.run({ image: tensor });
  const ran = performance.now();
  const probabilities = Array.from(outputs.probabilities.data);
  const [similarity, distance] = config.likeness_outputs;
  const likeness = similarity && outputs[similarity]
    ? { similarity: outputs[similarity].data[0], distance: outputs[distance].data[0] }
    : null;
  const top = answer(probabilities, likeness);
  // what the last photo took, in milliseconds: decoding, preprocessing, the model
  ms.model = ran - prepared;
  window.imgclf.last = { top, notes, size: [image.width, image.height], ms };
  return top;
}

function show(top) {
  const list = $("results");
  list.replaceChildren();
  for (const [rank, entry] of top.entries()) {
    const item = document.createElement("li");
    const row = document.createElement("div");
    row.className = "row";
    const label = document.createElement("span");
    label.textContent = rank === 0 && entry.unknown ? `unknown (closest: ${entry.name})` : entry.name;
    if (rank === 0 && entry.unknown) label.className = "unknown";
    const value = document.createElement("span");
    value.textContent = `${(entry.probability * 100).toFixed(1)}%`;
    row.append(label, value);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, entry.probability * 100)}%`;
    item.append(row, bar);
    if (rank === 0 && entry.reason) {
      const why = document.createElement("small");
      why.textContent = entry.reason;
      item.append(why);
    }
    list.append(item);
  }
}

async function classify(blob) {
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  preview.style.display = "block";
  status("Classifying…");
  const started = performance.now();
  try {
    show(await predict(blob));
    status(`Done in ${Math.round(performance.now() - started)} ms, on this device.`);
  } catch (error) {
    $("results").replaceChildren();
    status(error.message, true);
  }
}

let stream = null;

async function startCamera() {
  if (!navigator.mediaDevices?.getUserMedia) {
    status("This browser offers no live camera here (it needs HTTPS): use Take photo.", true);
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
  } catch (error) {
    status(`No camera: ${error.message}`, true);
    return;
  }
  const video = $("video");
  video.srcObject = stream;
  video.style.display = "block";
  await video.play();
  $("capture").disabled = false;
  status("Point the camera, then Classify frame.");
}

async function captureFrame() {
  const video = $("video");
  if (!video.videoWidth) return;
  const canvas = new OffscreenCanvas(video.videoWidth, video.videoHeight);
  canvas.getContext("2d").drawImage(video, 0, 0);
  await classify(await canvas.convertToBlob({ type: "image/png" }));
}

const ready = load();
let offlineReady;
const offline = new Promise((resolve) => (offlineReady = resolve));
window.imgclf = { ready, predict, input, info, offline, last: null };

for (const id of ["take", "choose"]) {
  $(id).addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) classify(file);
    event.target.value = "";
  });
}
$("camera").addEventListener("click", startCamera);
$("capture").addEventListener("click", captureFrame);

ready.then(
  () => {
    for (const id of ["take-label", "choose-label"]) $(id).classList.remove("disabled");
    $("camera").disabled = false;
    status(navigator.onLine ? "Ready: take or choose a photo." : "Ready, offline: take or choose a photo.");
  },
  (error) => status(error.message, true),
);

// offline: the service worker keeps every file (browsers run it on HTTPS and on localhost only);
// window.imgclf.offline resolves true once every file is in the browser's cache
if ("serviceWorker" in navigator && self.isSecureContext) {
  const worker = token ? `sw.js?token=${encodeURIComponent(token)}` : "sw.js";
  navigator.serviceWorker
    .register(worker, { scope: "./" })
    .then(() => navigator.serviceWorker.ready)
    .then(
      () => offlineReady(true),
      (error) => {
        console.warn("imgclf: no offline copy:", error.message);
        offlineReady(false);
      },
    );
} else {
  offlineReady(false);
  ready.then(() => {
    $("about").textContent += " · served over plain HTTP: it works while this server is reachable; install it from an HTTPS address to use it offline";
  });
}

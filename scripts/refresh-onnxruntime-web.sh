#!/usr/bin/env bash
# Refresh the ONNX Runtime Web runtime that `imgclf export --format web` puts in every phone app.
#
#   scripts/refresh-onnxruntime-web.sh 1.31.1
#
# Downloads the npm package onnxruntime-web at exactly that version (npm pack: the registry's
# tarball, checked against its integrity hash by npm), and copies the three files the app needs
# (the WebAssembly build with SIMD and threads, its loader, and the API module) with the licence
# into src/imgclf/export/web_app/vendor/onnxruntime-web/. Then run the browser tests:
#   pytest tests/export/test_web_app.py
set -euo pipefail
VERSION="${1:?usage: $0 VERSION (for example 1.31.1)}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="$HERE/src/imgclf/export/web_app/vendor/onnxruntime-web"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "onnxruntime-web@$VERSION" >/dev/null && tar xzf "onnxruntime-web-$VERSION.tgz")
INTEGRITY="$(cd "$WORK" && npm view "onnxruntime-web@$VERSION" dist.integrity)"
rm -rf "$TARGET" && mkdir -p "$TARGET"
for name in ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm; do
  cp "$WORK/package/dist/$name" "$TARGET/$name"
done
cat > "$TARGET/LICENSE" <<'LICENCE'
ONNX Runtime Web (npm package onnxruntime-web), vendored by imgclf: ort.wasm.min.mjs,
ort-wasm-simd-threaded.mjs and ort-wasm-simd-threaded.wasm are copied unchanged from the package's
dist/ folder. ONNX Runtime's third-party notices (the libraries built into the WebAssembly file):
https://github.com/microsoft/onnxruntime/blob/main/ThirdPartyNotices.txt

MIT License

Copyright (c) 2018 - present Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
LICENCE
(cd "$TARGET" && sha256sum ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm) > "$WORK/sums"
python3 - "$TARGET/VERSION.json" "$VERSION" "$INTEGRITY" "$WORK/sums" <<'PY'
import json, sys
path, version, integrity, sums = sys.argv[1:]
files = {name: digest for digest, name in (line.split() for line in open(sums))}
json.dump({"package": "onnxruntime-web", "version": version, "npm_integrity": integrity,
           "sha256": files}, open(path, "w"), indent=2)
open(path, "a").write("\n")
PY
echo "onnxruntime-web $VERSION → $TARGET"
ls -l "$TARGET"

// The app's service worker: after the first visit every file comes from the browser's cache, so the
// app opens and classifies with no network. `imgclf export --format web` fills in the build (a
// digest of every file: a new export is a new cache, and the old one is deleted once the new one is
// complete) and the file list.
//
// It also answers with the headers that make the page cross-origin isolated (COOP/COEP), which
// WebAssembly threads need and which a static host (GitHub Pages) cannot be told to send.
const BUILD = "__BUILD__";
const FILES = "__FILES__";
// files `imgclf serve` keeps behind its token: fetched with the token the page registered us with
const PRIVATE = "__PRIVATE__";
const SCOPE = self.registration.scope;
const CACHE = `imgclf-app ${SCOPE} ${BUILD}`;
const TOKEN = new URL(self.location.href).searchParams.get("token");

self.addEventListener("install", (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(CACHE);
      for (const file of FILES) {
        const headers = TOKEN && PRIVATE.includes(file) ? { Authorization: `Bearer ${TOKEN}` } : {};
        const response = await fetch(new Request(new URL(file, SCOPE), { cache: "reload", headers }));
        if (!response.ok) throw new Error(`${file}: HTTP ${response.status}`); // install again next visit
        await cache.put(new URL(file, SCOPE).href, response);
      }
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    (async () => {
      for (const name of await caches.keys()) {
        if (name.startsWith(`imgclf-app ${SCOPE} `) && name !== CACHE) await caches.delete(name);
      }
      await self.clients.claim();
    })(),
  );
});

function isolated(response) {
  if (response.type === "opaque" || response.status === 0) return response;
  const headers = new Headers(response.headers);
  headers.set("Cross-Origin-Opener-Policy", "same-origin");
  headers.set("Cross-Origin-Embedder-Policy", "require-corp");
  headers.set("Cross-Origin-Resource-Policy", "same-origin");
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET" || !request.url.startsWith(SCOPE)) return;
  event.respondWith(
    (async () => {
      const cache = await caches.open(CACHE);
      // the address's query (?token=…, ?threads=…) does not change the file
      const cached = await cache.match(request, { ignoreSearch: true, ignoreVary: true });
      if (cached) return isolated(cached);
      return isolated(await fetch(request));
    })(),
  );
});

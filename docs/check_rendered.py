"""Opens every page of the built site in headless Chromium and checks its figures.

Run after building the site (Chromium from Debian: ``apt-get install chromium``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python docs/check_rendered.py                    # every page
    python docs/check_rendered.py --screenshots /tmp/shots index.html api/densax.html

The built folder is served on ``127.0.0.1`` (an ephemeral port, this process
only) and one Chromium process loads a checker page which opens each site page
in a tall iframe, waits until every ``<img>`` has loaded or failed, and records
the ``naturalWidth`` of each: an image that did not decode has 0. The checker
writes its findings into its own DOM, which ``chromium --dump-dom`` prints.
Exit status 1, with the broken images listed, if any page has an image that did
not render or could not be opened. ``--screenshots DIR`` also saves a PNG of the
named pages (default: the index) as a reader would see them.
"""

from __future__ import annotations

import argparse
import functools
import html
import http.server
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

DOCS = Path(__file__).resolve().parent
CHECKER = "/__densax_check__.html"

_CHECKER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>densax render check</title></head>
<body><pre id="result">pending</pre>
<script>
const PAGES = %(pages)s;
const IMAGE_TIMEOUT_MS = 20000;

function loaded(img) {
  if (img.complete) return Promise.resolve();
  return new Promise((resolve) => {
    img.addEventListener("load", resolve, {once: true});
    img.addEventListener("error", resolve, {once: true});
    setTimeout(resolve, IMAGE_TIMEOUT_MS);
  });
}

function openPage(page) {
  return new Promise((resolve) => {
    const frame = document.createElement("iframe");
    frame.style.width = "1280px";
    frame.style.height = "30000px";  // every image in view: none stays lazy
    frame.addEventListener("load", () => resolve(frame), {once: true});
    frame.addEventListener("error", () => resolve(null), {once: true});
    frame.src = "/" + page;
    document.body.appendChild(frame);
  });
}

async function check() {
  const report = [];
  for (const page of PAGES) {
    const frame = await openPage(page);
    const doc = frame && frame.contentDocument;
    if (!doc || !doc.body) {
      report.push({page: page, error: "page did not load", images: []});
      continue;
    }
    const imgs = Array.from(doc.images);
    for (const img of imgs) img.loading = "eager";
    await Promise.all(imgs.map(loaded));
    report.push({
      page: page,
      title: doc.title,
      images: imgs.map((img) => ({
        src: img.getAttribute("src"),
        naturalWidth: img.naturalWidth,
        naturalHeight: img.naturalHeight,
      })),
    });
    frame.remove();
  }
  document.getElementById("result").textContent = JSON.stringify(report);
}
check();
</script></body></html>
"""


def find_chromium() -> str:
    """The Chromium executable on the PATH (exits with a hint if none)."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("check_rendered: no Chromium found (Debian: apt-get install chromium)")


def chromium_args(chromium: str, profile: str) -> list[str]:
    """Headless flags that work as root, in containers and in CI."""
    return [
        chromium,
        "--headless",
        "--no-sandbox",  # root in containers and CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]


class _Handler(http.server.SimpleHTTPRequestHandler):
    checker = b""

    def do_GET(self):
        if self.path.split("?")[0] == CHECKER:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(self.checker)))
            self.end_headers()
            self.wfile.write(self.checker)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


def serve(root: Path, pages: list[str]) -> http.server.ThreadingHTTPServer:
    """Serves ``root`` and the checker page on 127.0.0.1, in a thread."""
    handler = type(
        "Handler",
        (_Handler,),
        {"checker": (_CHECKER_PAGE % {"pages": json.dumps(pages)}).encode()},
    )
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def check(root: Path, pages: list[str], timeout: float = 300) -> list[dict]:
    """The images of each page, as Chromium rendered them."""
    server = serve(root, pages)
    url = f"http://127.0.0.1:{server.server_address[1]}{CHECKER}"
    try:
        with tempfile.TemporaryDirectory() as profile:
            cmd = chromium_args(find_chromium(), profile)
            cmd += ["--virtual-time-budget=600000", "--dump-dom", url]
            out = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, check=False
            )
    finally:
        server.shutdown()
        server.server_close()
    start = out.stdout.find('<pre id="result">')
    if start < 0:
        raise RuntimeError(f"Chromium printed no DOM:\n{out.stderr[-2000:]}")
    text = out.stdout[start + len('<pre id="result">') :].split("</pre>", 1)[0]
    text = html.unescape(text)
    if text == "pending":
        raise RuntimeError("the checker page did not finish (Chromium's time ran out)")
    return json.loads(text)


def screenshot(root: Path, page: str, path: Path, height: int = 1400) -> None:
    """Saves a PNG of one page at 1280 x ``height`` pixels."""
    server = serve(root, [])
    url = f"http://127.0.0.1:{server.server_address[1]}/{page}"
    try:
        with tempfile.TemporaryDirectory() as profile:
            cmd = chromium_args(find_chromium(), profile)
            cmd += [
                f"--window-size=1280,{height}",
                "--virtual-time-budget=10000",
                f"--screenshot={path}",
                url,
            ]
            subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    finally:
        server.shutdown()
        server.server_close()


def main(argv=None) -> int:
    """Checks the pages, prints one line each; 1 if any image did not render."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", help="pages to check (default: all)")
    parser.add_argument("--build", type=Path, default=DOCS / "_build" / "html")
    parser.add_argument("--screenshots", type=Path, help="save PNGs of the pages here")
    args = parser.parse_args(argv)
    root = args.build.resolve()
    if not (root / "index.html").exists():
        sys.exit(f"check_rendered: no built site in {root} (build it first)")
    pages = args.pages or sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.html")
        if not p.relative_to(root).parts[0].startswith("_")
    )
    report = check(root, pages)
    failures = 0
    for entry in report:
        broken = [img for img in entry["images"] if not img["naturalWidth"]]
        status = "ok" if not broken and "error" not in entry else "FAIL"
        failures += status == "FAIL"
        print(f"{status:4} {entry['page']}: {len(entry['images'])} images")
        if "error" in entry:
            print(f"     {entry['error']}")
        for img in broken:
            print(f"     not rendered: {img['src']}")
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
        for page in args.pages or ["index.html"]:
            path = args.screenshots / (
                page.replace("/", "_").removesuffix(".html") + ".png"
            )
            screenshot(root, page, path)
            print(f"screenshot {path}")
    n_images = sum(len(e["images"]) for e in report)
    print(f"{len(report)} pages, {n_images} images, {failures} pages with problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

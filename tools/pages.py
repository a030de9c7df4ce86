#!/usr/bin/env python3
"""Look at the built site as a reader does, at a laptop's width (1280 px), with headless Chromium.

    python tools/pages.py wide-math _build/html/book/*.html     display equations wider than the column
    python tools/pages.py shot _build/html/book/03_elbo.html /tmp/shots/03   screenshots, in 1500-px tiles

Needs Chromium (``apt-get install chromium``) and, since the site loads MathJax from a CDN, a local
MathJax 3 (``npm install --prefix /tmp/mj mathjax@3``; ``MATHJAX_DIR`` names another folder). The page is
served from its build folder with the CDN address replaced by the local copy. Screenshot tiles need
Pillow. Not part of the tests: CI has no browser.
"""

from __future__ import annotations

import argparse
import functools
import html
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager

CDN = "https://cdn.jsdelivr.net/npm/mathjax@3/"
MATHJAX_DIR = os.environ.get("MATHJAX_DIR", "/tmp/mj/node_modules/mathjax")
WIDTH = 1280

MEASURE = """<script>
setTimeout(() => { (window.MathJax && MathJax.startup ? MathJax.startup.promise : Promise.resolve()).then(() => {
  const out = [];
  document.querySelectorAll('div.math').forEach(d => {
    const m = d.querySelector('mjx-container'); if (!m) return;
    const eqno = d.querySelector('.eqno');
    const need = m.firstElementChild ? m.firstElementChild.getBoundingClientRect().width : m.scrollWidth;
    const have = d.getBoundingClientRect().width - (eqno ? eqno.getBoundingClientRect().width : 0);
    if (need > have + 2) out.push([((eqno || {}).textContent || '').replace('#', '') + ' ' +
        (d.id || (m.textContent || '').replace(/\\s+/g, ' ').slice(0, 50)), Math.round(need), Math.round(have)]);
  });
  const p = document.createElement('pre'); p.id = 'wide-math-result';
  p.textContent = JSON.stringify(out); document.body.appendChild(p);
}); }, 3000);
</script>"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def served(page: str, extra: str = ""):
    """Serve ``page``'s build folder on a free port; yield the URL of a copy using the local MathJax."""
    if not os.path.isdir(MATHJAX_DIR):
        sys.exit(f"no MathJax in {MATHJAX_DIR}: run `npm install --prefix /tmp/mj mathjax@3` or set MATHJAX_DIR")
    page = os.path.abspath(page)
    root = os.path.dirname(page)  # the site's root: the nearest folder above the page holding _static/
    while not os.path.isdir(os.path.join(root, "_static")) and os.path.dirname(root) != root:
        root = os.path.dirname(root)
    if not os.path.isdir(os.path.join(root, "_static")):
        root = os.path.dirname(page)
    name = os.path.relpath(page, root)
    link = os.path.join(root, "__mathjax")
    copy = os.path.join(os.path.dirname(page), "__look_" + os.path.basename(page))
    text = open(page, encoding="utf-8").read().replace(CDN, "../" * name.count("/") + "__mathjax/")
    with open(copy, "w", encoding="utf-8") as f:
        f.write(text.replace("</body>", extra + "</body>"))
    if not os.path.lexists(link):
        os.symlink(MATHJAX_DIR, link)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Quiet, directory=root))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}/{os.path.relpath(copy, root)}"
    finally:
        server.shutdown()
        os.remove(copy)
        os.remove(link)


def chromium(*args: str, timeout: int = 240) -> str:
    cmd = ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout


def wide_math(pages: list[str]) -> int:
    total = 0
    for page in pages:
        with served(page, MEASURE) as url:
            dom = chromium(f"--window-size={WIDTH},1400", "--virtual-time-budget=30000", "--dump-dom", url)
        m = re.search(r'<pre id="wide-math-result"[^>]*>(.*?)</pre>', dom, re.S)
        if not m:
            print(f"{page}: no result (MathJax did not finish)")
            total += 1
            continue
        wide = json.loads(html.unescape(m.group(1)))
        total += len(wide)
        print(f"{page}: {len(wide)} display equations wider than the column")
        for what, need, have in wide:
            print(f"    {what.strip()}: {need} px needed, {have} px available")
    return 1 if total else 0


def shot(page: str, out: str, height: int, tile: int) -> int:
    from PIL import Image

    full = out + "_full.png"
    with served(page) as url:
        chromium(f"--window-size={WIDTH},{height}", "--virtual-time-budget=20000", f"--screenshot={full}", url)
    img = Image.open(full).convert("RGB")
    w, h = img.size
    n = 0
    for top in range(0, h, tile):
        part = img.crop((0, top, w, min(top + tile, h)))
        lo, hi = zip(*part.crop((w // 4, 0, w, part.size[1])).getextrema(), strict=True)  # right of the sidebar
        if max(hi) - min(lo) < 60:  # nothing but background: past the end of the page
            continue
        name = f"{out}_{n:02d}.png"
        part.save(name)
        print(name)
        n += 1
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("wide-math", help="list display equations wider than the text column")
    p.add_argument("pages", nargs="+")
    p = sub.add_parser("shot", help="screenshot a page, cut into tiles OUT_00.png, OUT_01.png, ...")
    p.add_argument("page")
    p.add_argument("out")
    p.add_argument("--height", type=int, default=40000)
    p.add_argument("--tile", type=int, default=1500)
    a = ap.parse_args(argv)
    if a.command == "wide-math":
        return wide_math(a.pages)
    return shot(a.page, a.out, a.height, a.tile)


if __name__ == "__main__":
    sys.exit(main())

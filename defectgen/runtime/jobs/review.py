"""`OUT/index.html`: a static page to review a run folder, every result with its label outline and its record.

Why static: line-side boxes have no web server and run folders get zipped and copied around, so the page is one
file with inline CSS and JS that names the images by relative path and opens from file:// wherever the folder
goes. The label outlines are precomputed here as transparent PNGs (`OUT/review/<type>/NNN_outline.png`) and
stacked over the images with CSS, because a page opened from file:// may not read its own images' pixels back
(the browser treats them as cross-origin), so it cannot draw the outlines itself.

Memory: `jobs.jsonl` is streamed twice (the newest line per job id wins, as for resume) and only the first
`per_type` ok and failed jobs of each type (by index) are kept and shown, with a note saying how many more
there are: the page stays small for a run of 100k jobs. Images are never read; masks one at a time.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import numpy as np

from defectgen.data.imageio import atomic_write_text, read_mask, write_image
from defectgen.errors import DataError
from defectgen.runtime.jobs.record import JobRecord
from defectgen.runtime.jobs.run_folder import CONTACT_SHEET, JOBS_FILE, RUN_FILE, JobLog

PAGE = "index.html"
OUTLINE_DIR = "review"
OUTLINE_RGBA = (255, 40, 40, 255)  # the contact sheet's red


@dataclass
class _TypeJobs:
    """One defect type's counts and its first `per_type` ok and failed records, as max-heaps on the index."""

    ok: int = 0
    failed: int = 0
    shown: dict[str, list[tuple[int, int, JobRecord]]] = field(default_factory=lambda: {"ok": [], "failed": []})

    def add(self, rec: JobRecord, line: int, per_type: int) -> None:
        setattr(self, rec.status, getattr(self, rec.status) + 1)
        heap = self.shown[rec.status]
        item = (-int(rec.index), -line, rec)  # the line breaks ties, so records are never compared
        if len(heap) < per_type:
            heapq.heappush(heap, item)
        elif per_type > 0:
            heapq.heappushpop(heap, item)

    def records(self) -> list[JobRecord]:
        """The kept records of both statuses, in index order."""
        return [r for _, _, r in sorted(self.shown["ok"] + self.shown["failed"], key=lambda x: (-x[0], -x[1]))]


def _collect(log: JobLog, per_type: int) -> dict[str, _TypeJobs]:
    latest: dict[str, int] = {}
    for line, rec in enumerate(log.records()):
        latest[rec.id] = line
    jobs: dict[str, _TypeJobs] = {}
    for line, rec in enumerate(log.records()):
        if latest.get(rec.id) == line:
            jobs.setdefault(rec.type, _TypeJobs()).add(rec, line, per_type)
    return jobs


def outline_rgba(mask: np.ndarray) -> np.ndarray:
    """HxW {0,1} mask -> HxWx4 uint8: a 1 px ring just outside the label (8-neighbours), transparent elsewhere.

    Outside, so that at native pixels every labelled pixel stays visible under the outline.
    """
    m = mask > 0
    h, w = m.shape
    pad = np.pad(m, 1)
    grown = np.zeros_like(m)
    for dy in range(3):
        for dx in range(3):
            grown |= pad[dy:dy + h, dx:dx + w]
    out = np.zeros((h, w, 4), np.uint8)
    out[grown & ~m] = OUTLINE_RGBA
    return out


def _inside(out: Path, rel: str) -> Path | None:
    """`out / rel` when it stays inside `out` (record paths are user data), else None."""
    path = (out / rel).resolve()
    return path if path.is_relative_to(out.resolve()) else None


def outline_relpath(rec: JobRecord) -> str:
    """`test/<type>/NNN.png` -> `review/<type>/NNN_outline.png`."""
    image = PurePosixPath((rec.outputs or {})["image"])
    middle = image.parts[1:-1] if image.parts[0] == "test" and len(image.parts) > 2 else (rec.type,)
    return str(PurePosixPath(OUTLINE_DIR, *middle, f"{image.stem}_outline.png"))


def _outline(out: Path, rec: JobRecord) -> str | None:
    """Write (or keep, when newer than the mask) an ok job's outline PNG; its relative path, None when no mask."""
    rel = outline_relpath(rec)
    mask, dst = _inside(out, (rec.outputs or {})["mask"]), _inside(out, rel)
    if mask is None or dst is None or not mask.is_file():
        return None
    try:
        if not (dst.is_file() and dst.stat().st_mtime > mask.stat().st_mtime):
            write_image(dst, outline_rgba(read_mask(mask)))
    except (DataError, OSError):
        return None
    return rel


def _url(rel: str) -> str:
    return escape(quote(rel), quote=True)


def _num(v: object, digits: int = 3) -> str:
    return f"{v:.{digits}g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def _facts(rec: JobRecord) -> str:
    rows = [("seed", str(rec.seed))]
    if rec.window:
        scale = _num(rec.window.get("scale"))
        rows.append(("scale", scale + (" (enlarged)" if rec.window.get("enlarged") else "")))
    if rec.proposal and "score" in rec.proposal:
        rows.append(("critic", _num(rec.proposal["score"])))
    rows.append(("time", f"{_num(rec.time_s)} s"))
    body = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows)
    if rec.final_terms:
        terms = " ".join(f'<span class="term">{escape(k)}={_num(v, 2)}</span>' for k, v in rec.final_terms.items())
        body += f"<dt>loss</dt><dd>{terms}</dd>"
    record = escape(json.dumps(asdict(rec), indent=1, ensure_ascii=False))
    return f'<dl class="facts">{body}</dl><details><summary>record</summary><pre>{record}</pre></details>'


def _card(out: Path, rec: JobRecord) -> str:
    name = escape(f"{rec.type} {rec.index:03d}" + (f" v{rec.variant}" if rec.variant else ""))
    head = f'<div class="name">{name} <span class="status">{escape(rec.status)}</span></div>'
    if rec.status != "ok" or not rec.outputs:
        return (f'<article class="job failed" data-status="failed" data-index="{rec.index}">{head}'
                f'<p class="error">{escape(rec.error or "failed")}</p>'
                f'<p class="input">{escape(str(rec.inputs.get("image", "")))}</p>{_facts(rec)}</article>')
    outline = _outline(out, rec)
    line = f'<img class="outline" src="{_url(outline)}" alt="" loading="lazy">' if outline else ""
    return (f'<article class="job ok" data-status="ok" data-index="{rec.index}">'
            f'<div class="pic" tabindex="0" data-name="{name}" title="click: zoom to native pixels">'
            f'<img class="base" src="{_url(rec.outputs["image"])}" alt="{name}" loading="lazy">{line}</div>'
            f'{head}{_facts(rec)}</article>')


def _section(out: Path, defect_type: str, jobs: _TypeJobs) -> str:
    notes = []
    for status in ("ok", "failed"):
        total, shown = getattr(jobs, status), len(jobs.shown[status])
        if total > shown:
            notes.append(f'<p class="note{" ok-only" if status == "ok" else ""}">showing the first {shown} of '
                         f"{total} {status} jobs (by index); {total - shown} more are listed in {JOBS_FILE}</p>")
    cards = "".join(_card(out, rec) for rec in jobs.records())
    empty = "" if jobs.ok + jobs.failed else '<p class="note">no jobs of this type in this folder</p>'
    return (f'<section class="type{"" if jobs.failed else " no-failed"}" data-type="{escape(defect_type)}">'
            f'<h2>{escape(defect_type)} <small>{jobs.ok} ok · {jobs.failed} failed</small></h2>'
            f'{"".join(notes)}{empty}<div class="grid">{cards}</div></section>')


def _links(out: Path) -> str:
    names = [n for n in (CONTACT_SHEET, JOBS_FILE, RUN_FILE) if (out / n).is_file()]
    return " ".join(f'<a href="{_url(n)}">{escape(n)}</a>' for n in names)


def _ordered(found: Iterable[str], types: Sequence[str] | None) -> list[str]:
    first = list(types or [])
    return first + sorted(set(found) - set(first))


def write_review_page(out: Path, types: Sequence[str] | None = None, *, per_type: int = 500) -> Path:
    """Write `OUT/index.html` (and the outline PNGs it shows) for the run folder `out`; see the module docstring.

    Args:
        out: the run folder (`jobs.jsonl` and the MVTec-layout outputs).
        types: defect types in section order (the run's `--types`); types found in the log but not listed follow.
        per_type: most ok jobs, and most failed jobs, shown per type; the page says how many more there are.

    Returns:
        The page's path.

    Raises:
        DataError: the page cannot be written.
    """
    jobs = _collect(JobLog(out / JOBS_FILE), per_type)
    order = _ordered(jobs, types)
    n_ok, n_failed = sum(j.ok for j in jobs.values()), sum(j.failed for j in jobs.values())
    title = escape(f"defectgen run: {out.resolve().name}")
    sections = "".join(_section(out, t, jobs.get(t, _TypeJobs())) for t in order)
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width"><link rel="icon" href="data:,">'
            f"<style>{_CSS}</style></head><body><header><h1>{title}</h1>"
            f'<span class="counts"><b id="n-ok">{n_ok}</b> ok · <b id="n-failed">{n_failed}</b> failed</span>'
            f'<label><input type="checkbox" id="outline" checked> outline</label>'
            f'<label><input type="checkbox" id="failed-only"> failed only</label>'
            f'<span class="links">{_links(out)}</span></header><main>{sections}</main>'
            f'<div id="zoom" hidden><div class="bar"><span class="zname"></span> <span class="zscale"></span> '
            f'<button type="button" data-k="0.5">−</button><button type="button" data-k="2">+</button> '
            f'<label><input type="checkbox" class="zoutline" checked> outline</label> · '
            f"+/− keys: scale · click the image or Esc: close</div><div class=\"stage\"><div class=\"frame\">"
            f'<img class="base" alt=""><img class="outline" alt=""></div></div></div>'
            f"<script>{_JS}</script></body></html>\n")
    path = out / PAGE
    try:
        atomic_write_text(path, page)
    except OSError as e:
        msg = f"cannot write the review page {path}: {e.strerror or e}"
        raise DataError(msg) from None
    return path


_CSS = """
:root{color-scheme:dark}
body{margin:0;font:13px/1.35 system-ui,sans-serif;background:#181818;color:#ddd}
header{position:sticky;top:0;z-index:2;display:flex;flex-wrap:wrap;gap:18px;align-items:center;
 padding:8px 14px;background:#242424;border-bottom:1px solid #383838}
h1{font-size:15px;margin:0}
a{color:#8cf}
section{padding:4px 14px 10px}
h2{font-size:14px;margin:10px 0 6px}
h2 small,.input{color:#999;font-weight:normal}
.note{color:#fb6;margin:4px 0}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.job{width:200px;padding:6px;background:#222;border:1px solid #333;border-radius:4px;overflow-wrap:anywhere}
.job.failed{border-color:#a33}
.job.failed .status,.error{color:#f77}
.pic{position:relative;width:200px;height:200px;background:#111;cursor:zoom-in}
.pic img{position:absolute;inset:0;width:100%;height:100%;object-fit:contain}
.pic img.up,#zoom img{image-rendering:pixelated}
.outline{pointer-events:none}
body.no-outline .outline{visibility:hidden}
body.failed-only .job.ok,body.failed-only .ok-only,body.failed-only section.no-failed{display:none}
.name{margin:4px 0 2px;font-weight:600}
.facts{display:grid;grid-template-columns:auto 1fr;gap:0 6px;margin:0;font-size:12px}
.facts dt{color:#999}
.facts dd{margin:0}
.term{white-space:nowrap}
pre{max-height:260px;overflow:auto;white-space:pre-wrap;font-size:11px}
#zoom{position:fixed;inset:0;z-index:5;overflow:auto;background:rgba(0,0,0,.93);cursor:zoom-out}
#zoom[hidden]{display:none}
#zoom .bar{position:fixed;top:0;left:0;z-index:6;padding:6px 14px;background:#242424cc}
#zoom .stage{display:flex;min-width:100%;min-height:100%;box-sizing:border-box;padding:40px 20px 20px;
 width:max-content}
#zoom .frame{position:relative;margin:auto;flex:none}
#zoom .frame img{display:block}
#zoom .frame img.outline{position:absolute;left:0;top:0;width:100%;height:100%}
"""

_JS = """
(function () {
  var body = document.body, zoom = document.getElementById('zoom');
  var zbase = zoom.querySelector('img.base'), zline = zoom.querySelector('img.outline');
  var k = 1;
  function crisp(img) {  // enlarged thumbnails keep their pixels square
    var box = img.parentNode, up = img.naturalWidth < box.clientWidth && img.naturalHeight < box.clientHeight;
    box.querySelectorAll('img').forEach(function (i) { i.classList.toggle('up', up); });
  }
  document.querySelectorAll('.pic img.base').forEach(function (img) {
    if (img.complete && img.naturalWidth) { crisp(img); }
    img.addEventListener('load', function () { crisp(img); });
  });
  function size() {  // k image px per device px: 1 is the native pixels
    if (!zbase.naturalWidth) { return; }
    var r = window.devicePixelRatio || 1;
    zbase.style.width = (zbase.naturalWidth * k / r) + 'px';
    zbase.style.height = (zbase.naturalHeight * k / r) + 'px';
    zoom.querySelector('.zscale').textContent = zbase.naturalWidth + 'x' + zbase.naturalHeight + ' px, ' +
      (k >= 1 ? k + ':1' : '1:' + (1 / k));
  }
  zbase.addEventListener('load', size);
  function open(pic) {
    var b = pic.querySelector('img.base'), o = pic.querySelector('img.outline');
    k = 1;
    zbase.style.width = zbase.style.height = '';
    zbase.src = b.getAttribute('src');
    if (o) { zline.src = o.getAttribute('src'); } else { zline.removeAttribute('src'); }
    zline.hidden = !o;
    zoom.querySelector('.zname').textContent = pic.getAttribute('data-name');
    zoom.hidden = false;
    zoom.scrollTo(0, 0);
    size();
  }
  function close() { zoom.hidden = true; }
  document.querySelectorAll('.pic').forEach(function (pic) {
    pic.addEventListener('click', function () { open(pic); });
    pic.addEventListener('keydown', function (e) { if (e.key === 'Enter') { open(pic); } });
  });
  zoom.addEventListener('click', function (e) {
    var btn = e.target.closest('button');
    if (btn) { k = Math.min(32, Math.max(1 / 8, k * Number(btn.getAttribute('data-k')))); size(); }
    if (!e.target.closest('.bar')) { close(); }
  });
  document.addEventListener('keydown', function (e) {
    if (zoom.hidden) { return; }
    if (e.key === 'Escape') { close(); }
    if (e.key === '+' || e.key === '=') { k = Math.min(32, k * 2); size(); }
    if (e.key === '-') { k = Math.max(1 / 8, k / 2); size(); }
  });
  var toggles = [document.getElementById('outline'), zoom.querySelector('.zoutline')];
  toggles.forEach(function (t) {
    t.addEventListener('change', function () {  // one state, shown in the header and in the zoom
      toggles.forEach(function (u) { u.checked = t.checked; });
      body.classList.toggle('no-outline', !t.checked);
    });
  });
  document.getElementById('failed-only').addEventListener('change', function (e) {
    body.classList.toggle('failed-only', e.target.checked);
  });
})();
"""

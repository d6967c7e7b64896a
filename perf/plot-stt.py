#!/usr/bin/env python3
"""Plots one perf/stt-bench result (JSON from siprec-bench stt) as an SVG: the distribution of
latency from end of speech to final transcript, with the 1.5 s target, and the word error rates
of the engine fed directly and of the whole pipeline. Plain SVG, no plotting library.
Usage: perf/plot-stt.py results.json out.svg"""
import json, sys

d = json.load(open(sys.argv[1]))
out = sys.argv[2]
p = d["pipeline"]
lat = sorted(p.get("latencies_s") or [])
W, H, M = 720, 360, 60
xmax = max([2.0] + lat) * 1.1
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{M}" y="24" font-size="14">siprec live transcription: {d["sentences"]} sentences, '
       f'{d["calls"]} calls, {d["threads"]} thread(s) x {d["workers"]} worker(s)</text>']
# Left: latency CDF.
pw = 400
def px(x): return M + pw * x / xmax
def py(y): return H - M - (H - 2 * M) * y
svg.append(f'<line x1="{M}" y1="{py(0)}" x2="{M + pw}" y2="{py(0)}" stroke="black"/>')
svg.append(f'<line x1="{M}" y1="{py(0)}" x2="{M}" y2="{py(1)}" stroke="black"/>')
for i in range(0, int(xmax) + 1):
    svg.append(f'<text x="{px(i)}" y="{py(0) + 16}" text-anchor="middle">{i}</text>')
for q in (0, 0.5, 1):
    svg.append(f'<text x="{M - 6}" y="{py(q) + 4}" text-anchor="end">{int(q * 100)}%</text>')
svg.append(f'<text x="{M + pw / 2}" y="{H - 18}" text-anchor="middle">seconds from end of speech to final transcript</text>')
svg.append(f'<line x1="{px(1.5)}" y1="{py(0)}" x2="{px(1.5)}" y2="{py(1)}" stroke="#888" stroke-dasharray="4"/>')
svg.append(f'<text x="{px(1.5) + 4}" y="{py(1) + 12}" fill="#888">p50 target</text>')
if lat:
    pts = " ".join(f"{px(x):.1f},{py((i + 1) / len(lat)):.1f}" for i, x in enumerate(lat))
    svg.append(f'<polyline points="{pts}" fill="none" stroke="#2471a3" stroke-width="2"/>')
# Right: WER bars.
bx, bw = M + pw + 80, 60
bars = [("direct", d.get("direct", {}).get("wer")), ("pipeline", p.get("wer"))]
top = max([b[1] or 0 for b in bars] + [0.1]) * 1.2
for i, (name, v) in enumerate(bars):
    if v is None:
        continue
    h = (H - 2 * M) * v / top
    x = bx + i * (bw + 30)
    svg.append(f'<rect x="{x}" y="{py(0) - h}" width="{bw}" height="{h}" fill="{"#7f8c8d" if i == 0 else "#c0392b"}"/>')
    svg.append(f'<text x="{x + bw / 2}" y="{py(0) - h - 6}" text-anchor="middle">{v * 100:.1f}%</text>')
    svg.append(f'<text x="{x + bw / 2}" y="{py(0) + 16}" text-anchor="middle">{name}</text>')
svg.append(f'<text x="{bx + bw + 15}" y="{H - 18}" text-anchor="middle">word error rate</text>')
svg.append("</svg>")
open(out, "w").write("\n".join(svg) + "\n")
print("wrote", out)

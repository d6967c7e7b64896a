#!/usr/bin/env python3
"""Plots perf/results/capacity-*.json (from perf/run-capacity.sh) as one SVG: packets per second
handled and server CPU ns per packet (with the floor receiver's) against concurrent streams.
Plain SVG, no plotting library. Usage: perf/plot.py [results-dir] [out.svg]"""
import glob, json, os, sys

results = sys.argv[1] if len(sys.argv) > 1 else "perf/results"
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(results, "capacity.svg")
runs = []
for path in glob.glob(os.path.join(results, "capacity-*.json")):
    v = json.load(open(path))
    if v.get("streams"):
        runs.append(v)
runs.sort(key=lambda v: v["streams"])
if not runs:
    sys.exit("no capacity-*.json results in " + results)

W, H, M = 720, 420, 60
xs = [v["streams"] for v in runs]
series = [
    ("server ns/packet", [v.get("server_cpu_ns_per_packet") or 0 for v in runs], "#c0392b", 0),
    ("floor ns/packet", [v.get("floor_cpu_ns_per_packet") or 0 for v in runs], "#7f8c8d", 0),
    ("packets/s (right axis)", [v.get("packets_per_s") or 0 for v in runs], "#2471a3", 1),
]
xmax = max(xs) * 1.05
ymax = [max(max(s[1]) for s in series if s[3] == axis) * 1.15 or 1 for axis in (0, 1)]

def px(x): return M + (W - 2 * M) * x / xmax
def py(y, axis): return H - M - (H - 2 * M) * y / ymax[axis]

svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="20" text-anchor="middle" font-size="14">siprec capacity: CPU per packet and throughput vs concurrent streams</text>',
       f'<line x1="{M}" y1="{H-M}" x2="{W-M}" y2="{H-M}" stroke="black"/>',
       f'<line x1="{M}" y1="{M}" x2="{M}" y2="{H-M}" stroke="black"/>',
       f'<line x1="{W-M}" y1="{M}" x2="{W-M}" y2="{H-M}" stroke="black"/>',
       f'<text x="{W/2}" y="{H-20}" text-anchor="middle">concurrent G.711 streams</text>',
       f'<text x="15" y="{H/2}" transform="rotate(-90 15 {H/2})" text-anchor="middle">CPU ns per packet</text>',
       f'<text x="{W-12}" y="{H/2}" transform="rotate(90 {W-12} {H/2})" text-anchor="middle">packets per second</text>']
for i in range(5):
    for axis, x, anchor in ((0, M - 5, "end"), (1, W - M + 5, "start")):
        y = ymax[axis] * i / 4
        svg.append(f'<text x="{x}" y="{py(y, axis)+4}" text-anchor="{anchor}">{y:.0f}</text>')
for x in xs:
    svg.append(f'<text x="{px(x)}" y="{H-M+16}" text-anchor="middle">{x}</text>')
for k, (name, ys, color, axis) in enumerate(series):
    pts = " ".join(f"{px(x):.1f},{py(y, axis):.1f}" for x, y in zip(xs, ys))
    svg.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
    for x, y in zip(xs, ys):
        svg.append(f'<circle cx="{px(x):.1f}" cy="{py(y, axis):.1f}" r="3" fill="{color}"/>')
    svg.append(f'<rect x="{M+10}" y="{M+k*18}" width="12" height="3" fill="{color}"/>')
    svg.append(f'<text x="{M+28}" y="{M+k*18+5}">{name}</text>')
svg.append("</svg>")
open(out, "w").write("\n".join(svg) + "\n")
print("plot written to", out)

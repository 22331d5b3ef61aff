#!/usr/bin/env python3
"""Seeds each target's corpus with the frames of spec/vectors/frames.txt."""
import os, sys
here = os.path.dirname(os.path.abspath(__file__))
kinds = {"ClientFrame": "client_frames", "ServerFrame": "server_frames"}
frames, kind = {}, None
for line in open(os.path.join(here, "..", "spec", "vectors", "frames.txt")):
    if line.startswith("name: "):
        name = line[6:].strip()
    elif line.startswith("type: "):
        kind = line[6:].strip()
    elif line.startswith("hex: ") and kind in kinds:
        frames.setdefault(kinds[kind], []).append((name, bytes.fromhex(line[5:].strip())))
for target, items in frames.items():
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, body in items:
        # client_frames reads its first byte as the read size: 0x3f is 64-byte reads.
        data = (b"\x3f" + body) if target == "client_frames" else body
        open(os.path.join(d, "vector-" + name), "wb").write(data)
    print(f"{target}: {len(items)} seeds", file=sys.stderr)

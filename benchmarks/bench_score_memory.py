"""Peak memory of `rsa score` on a large input against a tiny one: grading streams, so memory must not grow with the file.

Writes a JSONL file of math generations (long completions, as reasoning models write them) of about `--mb`
megabytes, and a 10-line file of the same lines; runs `rsa score` on each under `/usr/bin/time -v` and prints
both peak resident set sizes (RSS) side by side with the input sizes and their ratio. The issue that asked for
streaming measured 926 MB of peak RSS for a 163 MB input before; the target is under 300 MB for 150 MB.

    python benchmarks/bench_score_memory.py [--mb 150] [--line-kb 4] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def write_input(path: Path, size_mb: float, line_kb: float) -> int:
    """A JSONL file of math generations of about `size_mb` MB; returns its line count."""
    filler = "Let me work through this step by step. " * max(1, int(line_kb * 1024 / 40))
    target, written, lines = int(size_mb * (1 << 20)), 0, 0
    with path.open("w", encoding="utf-8") as fh:
        while written < target:
            answer = lines % 97
            record = {"task": "math", "id": f"p{lines}", "completion": f"{filler} So \\boxed{{{answer}}}",
                      "answer": str(answer if lines % 3 else answer + 1)}  # fmt: skip
            line = json.dumps(record) + "\n"
            fh.write(line)
            written += len(line.encode())
            lines += 1
    return lines


def peak_rss_mb(input_path: Path, output_path: Path) -> float:
    """Peak RSS of `rsa score` on `input_path`, in MB (from /usr/bin/time -v)."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "rsa.cli", "score", "--input", str(input_path),
               "--output", str(output_path)]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"rsa score failed ({proc.returncode}): {proc.stderr[-2000:]}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if match is None:
        raise SystemExit(f"no peak RSS in /usr/bin/time output: {proc.stderr[-2000:]}")
    return int(match.group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=150.0, help="size of the large input in MB")
    parser.add_argument("--line-kb", type=float, default=4.0, help="size of one completion in KB")
    parser.add_argument("--keep", type=Path, default=None, help="write the files here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        large, small = folder / "large.jsonl", folder / "small.jsonl"
        n_lines = write_input(large, args.mb, args.line_kb)
        with large.open(encoding="utf-8") as fh, small.open("w", encoding="utf-8") as out:
            out.writelines(line for _, line in zip(range(10), fh))
        rows = []
        for name, path in (("10 lines", small), (f"{n_lines} lines", large)):
            size_mb = path.stat().st_size / (1 << 20)
            rss = peak_rss_mb(path, folder / f"graded-{path.name}")
            rows.append((name, size_mb, rss))
    print(f"{'input':>14} {'input MB':>9} {'peak RSS MB':>12} {'RSS / input':>12}")
    for name, size_mb, rss in rows:
        print(f"{name:>14} {size_mb:9.1f} {rss:12.1f} {rss / size_mb:12.2f}")
    print(f"peak RSS grew by {rows[1][2] - rows[0][2]:.1f} MB for {rows[1][1] - rows[0][1]:.1f} MB more input")


if __name__ == "__main__":
    main()

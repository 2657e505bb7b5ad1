"""Pre-flight scan of an image list: finds the files that would stop (or silently spoil) training.

    python -m burn.data.check --root data/imagenet/train --list data/imagenet/meta/train.txt \
        [--write-clean clean.txt] [--workers 16]

Kinds of bad file: ``missing``, ``empty`` (zero bytes), ``not-an-image`` (no image signature, or a
format DALI cannot decode), ``truncated``, ``undecodable`` (the decoder gives up) and ``corrupt``
(garbled entropy data: libjpeg decodes it with "Corrupt JPEG data" warnings into a partly garbage
image; DALI does so silently). A garble after which the JPEG Huffman stream happens to resynchronise
leaves no trace any decoder can see; it cannot be found by any scan. Exit status 1 when bad files
exist, 2 when the list itself is unusable, 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import multiprocessing
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from burn.data.errors import DataError, DatasetError
from burn.data.lists import SampleList, derive_list, parse_list

#: Leading bytes of the formats DALI decodes (and of GIF, which it does not).
_SIGNATURES = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"\x00\x00\x00\x0cjP  ", "jp2"),
    (b"GIF8", "gif"),
)
_DALI_FORMATS = {"jpeg", "png", "bmp", "tiff", "webp", "pnm", "jp2"}


@dataclass(frozen=True)
class Problem:
    kind: str
    detail: str


def sniff_format(head: bytes) -> str | None:
    """Image format from the first bytes, None when no known signature matches."""
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if len(head) > 1 and head[0:1] == b"P" and head[1:2] in b"123456":
        return "pnm"
    return None


def _decode_with_pil(data: bytes) -> Problem | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        kind = "truncated" if "truncated" in str(err).lower() else "undecodable"
        return Problem(kind, f"{type(err).__name__}: {err}")
    return None


@contextlib.contextmanager
def _captured_stderr() -> Iterator[tempfile.TemporaryFile]:
    """Redirect file descriptor 2 (where libjpeg prints its warnings) into a temporary file."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield sink
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@functools.cache
def _libjpeg_decoder():
    """torchvision's libjpeg decoder (imported once, before worker processes fork), None if absent."""
    try:
        import torch
        from torchvision.io import decode_jpeg
    except ImportError:
        return None
    return lambda data: decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))


def _decode_jpeg_strict(data: bytes) -> Problem | None:
    """Decode with libjpeg (torchvision) and treat its corrupt-data warnings as failures; PIL hides them."""
    decode = _libjpeg_decoder()
    if decode is None:
        return _decode_with_pil(data)
    with _captured_stderr() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation notices are not about the file
        try:
            decode(data)
            failure = None
        except RuntimeError as err:
            failure = re.sub(r"^.*?\.cpp:\d+,\s*", "", str(err).strip())  # drop the C++ source location
        sink.seek(0)
        printed = sink.read().decode(errors="replace").strip()
    if failure:
        kind = "truncated" if "truncated" in failure.lower() else "undecodable"
        return Problem(kind, failure)
    if printed:
        message = printed.splitlines()[0]
        return Problem("truncated" if "Premature end of JPEG" in message else "corrupt", message)
    return None


def inspect_image(path: str, strict: bool = True) -> Problem | None:
    """The problem with the image file at ``path``, or None when it decodes cleanly. ``strict`` also
    catches garbled JPEG data that decoders accept with warnings (slower; used by the scan)."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return Problem("missing", "no such file")
    except OSError as err:
        return Problem("unreadable", err.strerror or str(err))
    if not data:
        return Problem("empty", "zero bytes")
    image_format = sniff_format(data[:16])
    if image_format is None:
        return Problem("not-an-image", f"no image signature (starts with {data[:8]!r})")
    if image_format not in _DALI_FORMATS:
        return Problem("not-an-image", f"{image_format.upper()} is not a format DALI decodes")
    if image_format == "jpeg":
        if data.rfind(b"\xff\xd9") < 0:
            return Problem("truncated", "no JPEG end-of-image marker")
        if strict:
            return _decode_jpeg_strict(data)
    return _decode_with_pil(data)


def check_command(samples: SampleList) -> str:
    """The command that scans ``samples`` (for error messages)."""
    command = f"python -m burn.data.check --root {samples.base_dir}"
    if not samples.source.startswith("class folders of "):
        command += f" --list {samples.source}"
    return command + " --write-clean clean.txt"


def decode_failure(error: Exception, samples: SampleList, candidates: Sequence[int]) -> DataError:
    """A DataError for a batch the pipeline could not read: names the bad file(s) among ``candidates``
    (sample indices of the failed batch) and the scan to run."""
    found = []
    for index in candidates:
        path = os.path.join(str(samples.base_dir), samples.paths[index])
        problem = inspect_image(path, strict=False)
        if problem is not None:
            found.append((index, path, problem))
    cause = str(error).strip().splitlines()
    cause_text = " ".join(line.strip() for line in cause if line.strip())
    # DALI's message repeats its prefix and quotes the pipeline's Python traceback: keep the operator.
    cause_text = re.sub(r"(Critical error in pipeline: )+", "Critical error in pipeline: ", cause_text)
    cause_text = cause_text.split(", which was used in the pipeline definition")[0][:300]
    if found:
        index, path, problem = found[0]
        line = f" (line {samples.lines[index]} of {samples.source})" if samples.lines[index] else ""
        head = f"cannot decode image {path}{line}: {problem.kind}, {problem.detail}"
        if len(found) > 1:
            head += f"; {len(found) - 1} more bad file(s) in the same batch"
    else:
        sample = ", ".join(samples.paths[i] for i in list(candidates)[:4])
        head = f"the data pipeline failed on a batch of {samples.source} (files {sample}, ...)"
    # One line (the entry points print it last): what, where, the pipeline's words, then what to do.
    return DataError(
        f"{head} (pipeline error: {cause_text}). Find every bad file at once before training "
        f"again: {check_command(samples)}"
    )


def _inspect_strict(path: str) -> Problem | None:
    return inspect_image(path, strict=True)


def scan(samples: SampleList, workers: int = 0, progress: bool = True) -> list[tuple[int, Problem]]:
    """(sample index, problem) for every bad file of ``samples``, checked by ``workers`` processes
    (0: one per CPU core)."""
    paths = samples.absolute_paths()
    workers = workers or os.cpu_count() or 1
    _libjpeg_decoder()  # import once here rather than in every worker
    bar = tqdm(total=len(paths), unit="img", desc="scanning", disable=not progress, file=sys.stderr)
    problems = []
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(multiprocessing.Pool(workers))
            results = pool.imap(_inspect_strict, paths, chunksize=64)
        else:
            results = map(_inspect_strict, paths)
        for index, problem in enumerate(results):
            bar.update(1)
            if problem is not None:
                problems.append((index, problem))
    bar.close()
    return problems


def write_clean_list(samples: SampleList, bad: set, out: Path) -> int:
    """Write ``samples`` minus the bad ones: the original lines of a list file, or ``path label`` lines
    of a derived list. Returns the number of lines written."""
    if samples.source.startswith("class folders of "):
        kept = [f"{p} {label}" for i, (p, label) in enumerate(zip(samples.paths, samples.labels)) if i not in bad]
    else:
        bad_lines = {samples.lines[i] for i in bad}
        lines = Path(samples.source).read_text().splitlines()
        kept = [text for number, text in enumerate(lines, 1) if text.strip() and number not in bad_lines]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(line + "\n" for line in kept))
    return len(kept)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m burn.data.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="folder the list's paths are relative to")
    parser.add_argument(
        "--list", help="list file (one path, or 'path label', per line); default: the class folders under --root"
    )
    parser.add_argument("--write-clean", metavar="OUT", help="write the list without the bad files here")
    parser.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        root = Path(args.root)
        samples = parse_list(Path(args.list), root, labeled=False) if args.list else derive_list(root)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problems = scan(samples, args.workers, progress=not args.no_progress)
    print(f"scanned {len(samples)} files of {samples.source} (root {root}): {len(problems)} bad")
    for index, problem in problems:
        line = f"line {samples.lines[index]}" if samples.lines[index] else "-"
        path = os.path.join(str(samples.base_dir), samples.paths[index])
        print(f"  {line:>10}  {problem.kind:<13} {path}  ({problem.detail})")
    if args.write_clean:
        count = write_clean_list(samples, {index for index, _ in problems}, Path(args.write_clean))
        print(f"clean list written to {args.write_clean} ({count} lines)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Fetch a BEIR dataset zip (the official one, or any http/https/file URL) and unpack it atomically."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def fetch_beir_zip(url: str, dest: Path) -> Path:
    """Download `url` and unpack its BEIR folder (the one holding corpus.jsonl) to `dest`.

    Unpacking happens in a temporary folder beside `dest` and ends in one rename, so an interrupted
    download never leaves a folder that looks complete.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        archive = Path(tmp) / "data.zip"
        log.info("Downloading %s", url)
        with urllib.request.urlopen(url) as response, open(archive, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(archive) as z:
            z.extractall(unpacked)
        roots = [p.parent for p in unpacked.rglob("corpus.jsonl")]
        if len(roots) != 1:
            raise ValueError(f"{url}: expected one BEIR folder (with corpus.jsonl) in the zip, found {len(roots)}")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(roots[0], dest)
    log.info("Unpacked %s to %s", url, dest)
    return dest

"""`hf.co/OWNER/REPO:QUANT` (Ollama's syntax for Hugging Face GGUF repositories) to a
pinned ModelSpec: which file, at which commit, with which sha256 (issue 20).

The repository's metadata (huggingface-hub's `model_info` with file metadata, so
HF_ENDPOINT mirrors work) lists its files with their LFS sha256; the GGUF whose name
carries the quantisation tag is chosen, pinned to the commit the metadata came from,
and downloaded by the store like any pinned model (verified, resumable, quarantined
on mismatch). Imported only by `inferd pull`: it needs huggingface-hub.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from urllib.parse import urlsplit

from .spec import ModelSpec, StoreError

#: Ollama's default when a reference names no quantisation.
DEFAULT_QUANT = "Q4_K_M"
_REF = re.compile(r"^(?:https?://)?(?:hf\.co|huggingface\.co)/([A-Za-z0-9][\w.-]*)/([\w.-]+?)(?::([\w.-]+))?$")
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class HubRef:
    owner: str
    repo: str
    quant: str | None

    @property
    def repo_id(self) -> str:
        return f"{self.owner}/{self.repo}"

    def __str__(self) -> str:
        return f"hf.co/{self.repo_id}" + (f":{self.quant}" if self.quant else "")


def parse_ref(text: str) -> HubRef:
    m = _REF.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a Hugging Face reference such as hf.co/OWNER/REPO:Q4_K_M")
    return HubRef(m.group(1), m.group(2), m.group(3))


def _tagged(filename: str, quant: str) -> bool:
    stem = filename.rsplit("/", 1)[-1].upper().removesuffix(".GGUF")
    return re.search(rf"(?<![A-Z0-9]){re.escape(quant.upper())}(?![A-Z0-9_])", stem) is not None


def choose(files: dict[str, tuple[str | None, int | None]], ref: HubRef) -> tuple[str, str]:
    """(file name, quant) among `files` (name -> (sha256, size)) for `ref`. Raises StoreError."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf") and "mmproj" not in f.lower())
    if not ggufs:
        raise StoreError(f"{ref} has no GGUF file")
    quant = ref.quant or DEFAULT_QUANT
    hits = [f for f in ggufs if _tagged(f, quant)]
    if not hits and ref.quant is None and len(ggufs) == 1:
        hits, quant = ggufs, ""
    if not hits:
        tags = sorted({t.upper() for f in ggufs for t in re.findall(
            r"(?<![A-Za-z0-9])(I?Q\d\w*|F16|BF16|F32)", f.rsplit("/", 1)[-1].removesuffix(".gguf"), re.IGNORECASE)})
        raise StoreError(f"{ref}: no GGUF file for {quant}; it has: {', '.join(tags) or ', '.join(ggufs)}")
    whole = [f for f in hits if not _SPLIT.search(f)]
    if not whole:
        raise StoreError(f"{ref}: the {quant} GGUF is split in parts ({hits[0]}, ...); split GGUFs are not "
                         "supported yet")
    return whole[0], quant


def resolve(ref: HubRef, endpoint: str | None = None) -> tuple[ModelSpec, str]:
    """The pinned spec for `ref` and the quant it chose. Raises StoreError."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError

    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    parts = urlsplit(endpoint)
    # THREAT_MODEL F-25: the Hub token rides on this request too; plain http only to a
    # mirror on this machine, as the downloader (fetch.py) requires.
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        raise StoreError(f"refusing model source {endpoint}: use https:// (plain http only on loopback)")
    try:
        info = HfApi(endpoint=endpoint).model_info(ref.repo_id, revision="main", files_metadata=True)
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise StoreError(f"cannot read {ref}'s file list from {endpoint}: {str(exc).splitlines()[0]}") from None
    files = {s.rfilename: (s.lfs.sha256 if s.lfs else None, s.size) for s in (info.siblings or [])}
    filename, quant = choose(files, ref)
    sha, size = files[filename]
    if not sha:
        raise StoreError(f"{ref}: the hub gives no sha256 for {filename}; it cannot be verified, so it is not pulled")
    store_name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{ref.owner}--{ref.repo}--{quant or 'gguf'}")[:128].lstrip(".")
    spec = ModelSpec(name=store_name, sha256=sha, repo=ref.repo_id, filename=filename,
                     revision=info.sha or "main", size_bytes=size)
    return spec, quant


def entry_name(ref: HubRef, quant: str) -> str:
    """The config name `inferd pull` gives it: the repository without `-GGUF`, and the quant."""
    base = re.sub(r"[-_.]gguf$", "", ref.repo, flags=re.IGNORECASE).lower()
    return f"{base}:{quant.lower()}" if quant else base

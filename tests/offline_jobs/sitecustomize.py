"""Test-only start-up hook of every Python process of the offline cluster test
(tests/test_offline.py puts this folder first on PYTHONPATH).

* ``VOCABSEG_TEST_NO_NETWORK=1`` (set by ``submit`` for the "compute node" jobs only):
  every IPv4/IPv6 connection fails with ENETUNREACH, as on a node without network.
* ``VOCABSEG_TEST_CLIP_URL=<url>``: open_clip learns the pretrained tag ``faketag`` of
  the tiny CLIP, downloaded from ``<url>`` (registered when open_clip.pretrained is
  imported, so processes that never import open_clip pay nothing).
"""

import errno
import importlib.abc
import importlib.util
import os
import socket
import sys

if os.environ.get("VOCABSEG_TEST_NO_NETWORK") == "1":
    _connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex

    def _offline(sock):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH))

    def connect(self, address):
        _offline(self)
        return _connect(self, address)

    def connect_ex(self, address):
        _offline(self)
        return _connect_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex


class _RegisterFakeTag(importlib.abc.MetaPathFinder):
    """Adds ``faketag`` to open_clip's pretrained registry right after it is imported."""

    def find_spec(self, name, path, target=None):
        if name != "open_clip.pretrained":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            url = os.environ["VOCABSEG_TEST_CLIP_URL"]
            module._PRETRAINED.setdefault("vocabseg-tiny-convnext", {})["faketag"] = {"url": url, "hf_hub": ""}

        spec.loader.exec_module = exec_and_register
        return spec


if os.environ.get("VOCABSEG_TEST_CLIP_URL"):
    sys.meta_path.insert(0, _RegisterFakeTag())

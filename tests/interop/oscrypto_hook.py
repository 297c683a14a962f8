"""Make oscrypto 1.3.0 (pyas2lib's crypto) importable on OpenSSL 3.0.10 and later.

oscrypto reads the libcrypto version with the regex ``\\b(\\d\\.\\d\\.\\d[a-z]*)\\b``: one digit per
part, so "OpenSSL 3.0.19" does not match and ``import oscrypto.asymmetric`` raises
LibraryNotFoundError. This import hook compiles the two modules that hold that regex
(``_libcrypto_cffi`` and ``_libcrypto_ctypes``) from their installed source with the regex widened
to ``\\d+`` per part, in memory only: nothing on disk is changed and no bytecode is written.
`install()` must run before the first ``import pyas2lib``; it fails loudly when the regex is not
found (another oscrypto version: look again rather than run unpatched).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_MODULES = ("oscrypto._openssl._libcrypto_cffi", "oscrypto._openssl._libcrypto_ctypes")
_NARROW = rb"re.search('\\b(\\d\\.\\d\\.\\d[a-z]*)\\b', version_string)"
_WIDE = rb"re.search('\\b(\\d+\\.\\d+\\.\\d+[a-z]*)\\b', version_string)"


class _WidenedLoader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname: str):  # always from source: never a cached (unpatched) .pyc, never write one
        source = self.get_data(self.path)
        if source.count(_NARROW) != 1:
            raise ImportError(f"{fullname}: the OpenSSL version regex to widen was not found (oscrypto changed?)")
        return compile(source.replace(_NARROW, _WIDE), self.path, "exec", dont_inherit=True)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec
        spec.loader = _WidenedLoader(fullname, spec.origin)
        return spec


def install() -> None:
    """Put the finder first on sys.meta_path (idempotent). Call before importing pyas2lib or oscrypto."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    if any(name in sys.modules for name in _MODULES):
        return  # already imported (patched earlier in this process, or the regex was not needed)
    sys.meta_path.insert(0, _Finder())

"""A small client for `diffprune serve` (the standard library's HTTP, no extra package):

    client = Client("http://127.0.0.1:8000", api_key=None)
    result = client.generate(prompt="a handwritten digit seven", n=2, seed=0)
    images = decode_images(result)  # (N, H, W, C) uint8
"""

import base64
import io
import json
import urllib.error
import urllib.request

import numpy as np

from diffprune.runtime.errors import DiffPruneError


class ServeError(DiffPruneError):
    """The server refused or failed a request: ``status``, ``field`` (the request field at fault, if any),
    ``retry_after`` (seconds, for 503), and the server's message."""

    def __init__(self, status: int, message: str, field: str | None = None, retry_after: float | None = None):
        super().__init__(f"HTTP {status}" + (f" ({field})" if field else "") + f": {message}")
        self.status, self.field, self.retry_after = status, field, retry_after


class Client:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 120.0):
        self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple:
        """One HTTP exchange: ``(status, headers, body bytes)``, whatever the status (connection errors raise)."""
        head = {"Content-Type": "application/json", **(headers or {})}
        if self.api_key:
            head["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=head)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def generate(self, **fields) -> dict:
        """``POST /v1/images`` with ``fields`` (prompt, n, steps, seed, ...): the response JSON, or :class:`ServeError`."""
        status, headers, body = self.request("POST", "/v1/images", json.dumps(fields).encode())
        data = _json(body)
        if status != 200:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            retry = headers.get("Retry-After")
            raise ServeError(status, err.get("message") or body[:200].decode(errors="replace"), err.get("field"),
                             float(retry) if retry else None)
        return data

    def ready(self) -> bool:
        return self.request("GET", "/readyz")[0] == 200

    def metrics(self) -> str:
        status, _, body = self.request("GET", "/metrics")
        if status != 200:
            raise ServeError(status, body[:200].decode(errors="replace"))
        return body.decode()


def decode_images(result: dict) -> np.ndarray:
    """A response's base64 PNGs -> (N, H, W, C) uint8."""
    from PIL import Image

    out = []
    for text in result["images"]:
        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))
        out.append(image[..., None] if image.ndim == 2 else image)
    return np.stack(out)


def _json(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        return {}

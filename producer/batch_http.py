"""The gateway's Batch API over HTTP, with the standard library only (``loraq batch``).

A producer-only install has no HTTP client dependency; the Batch API needs just a few
JSON requests and one multipart upload.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from producer.settings import GatewaySettings
from schemas.batches import Batch, BatchList, FileObject


class GatewayError(Exception):
    """The gateway refused a request (``status`` 0: it could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status


class BatchClient:
    """Upload files, create, read, list and cancel batches on a loraq gateway."""

    def __init__(self, settings: GatewaySettings | None = None) -> None:
        self.settings = settings or GatewaySettings()
        self.base = self.settings.gateway_url.rstrip("/")

    def upload(self, path: Path) -> FileObject:
        """Upload ``path`` as a ``purpose=batch`` file."""
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n',
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{path.name}"\r\nContent-Type: application/jsonl\r\n\r\n',
        ]
        body = "".join(parts).encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        content_type = f"multipart/form-data; boundary={boundary}"
        return FileObject.model_validate(self._call("POST", "/v1/files", body, content_type))

    def create(self, file_id: str, endpoint: str) -> Batch:
        """Start a batch over an uploaded file."""
        request = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"}
        return Batch.model_validate(self._json("POST", "/v1/batches", request))

    def get(self, batch_id: str) -> Batch:
        """A batch as its jobs stand."""
        return Batch.model_validate(self._json("GET", f"/v1/batches/{batch_id}"))

    def list(self, limit: int = 20) -> BatchList:
        """The newest batches."""
        return BatchList.model_validate(self._json("GET", f"/v1/batches?limit={limit}"))

    def cancel(self, batch_id: str) -> Batch:
        """Cancel a batch."""
        return Batch.model_validate(self._json("POST", f"/v1/batches/{batch_id}/cancel", {}))

    def content(self, file_id: str) -> bytes:
        """An output or error file's bytes."""
        content: bytes = self._call("GET", f"/v1/files/{file_id}/content", None, None, raw=True)
        return content

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        return self._call(method, path, data, "application/json" if data else None)

    def _call(
        self,
        method: str,
        path: str,
        data: bytes | None,
        content_type: str | None,
        *,
        raw: bool = False,
    ) -> Any:
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.settings.api_key is not None:
            request.add_header(
                "Authorization", f"Bearer {self.settings.api_key.get_secret_value()}"
            )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.http_timeout_s) as reply:
                payload: bytes = reply.read()
        except urllib.error.HTTPError as exc:
            raise GatewayError(exc.code, _message(exc.read())) from None
        except (urllib.error.URLError, OSError) as exc:
            raise GatewayError(0, f"gateway {self.base} unreachable: {exc}") from None
        return payload if raw else json.loads(payload)


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:500]

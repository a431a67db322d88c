"""etcd, the fleet's store: every call warmvm makes to it, behind one narrow interface.

A range read with the store's revision, a transaction (compares, then puts
and deletes), leases (grant, keep-alive, revoke) and a prefix watch from a
revision. Spoken over etcd's JSON gateway with the `etcd3gw` client (one
client per endpoint; etcd 3.4 wants `api_path='/v3/'`): a call that cannot
reach an endpoint, or gets no answer in time (a member cut off from the
majority cannot serve a linearizable read), moves on to the next endpoint;
when every endpoint failed, one StoreUnavailable names them all. The watch
reads the gateway's stream itself, so that a broken stream is seen (and
resumed from the last revision) rather than waiting forever.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_errors

from ..base.errors import PermanentError, TemporaryError

TIMEOUT = 3.0  # seconds one call may take before the next endpoint is tried
WATCH_IDLE = 15.0  # a watch stream with nothing to say for this long is opened again (a dead peer shows)


class StoreUnavailable(TemporaryError):
    """No endpoint answered: the message names each one tried and why."""


@dataclass(frozen=True)
class Tls:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class Item:
    key: str
    value: bytes
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class Compare:
    """A transaction's guard on one key: `target` (version, mod, create, value, lease) `op` `value`;
    a key that does not exist has version, mod and create 0."""

    key: str
    target: str
    value: int | bytes
    op: str = "EQUAL"  # EQUAL | GREATER | LESS | NOT_EQUAL


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str


@dataclass(frozen=True)
class Event:
    key: str
    value: bytes | None  # None: deleted
    revision: int


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def _range_end(prefix: str) -> str:
    """The key just past every key under `prefix` (etcd's range end for a prefix)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return _b64(bytes(raw))


class Etcd:
    def __init__(self, endpoints: Sequence[str], tls: Tls | None = None, timeout: float = TIMEOUT) -> None:
        if not endpoints:
            raise PermanentError("--store: no endpoint given (or set $WARMVM_STORE)")
        self.endpoints = list(endpoints)
        self.clients = [_client(url, tls or Tls(), timeout) for url in self.endpoints]
        self.current = 0
        self.lock = threading.Lock()

    # --- the calls ---------------------------------------------------------------------------

    def range(self, prefix: str) -> tuple[list[Item], int]:
        """Every key under `prefix`, and the store's revision they were read at."""
        reply = self._post("/kv/range", {"key": _b64(prefix), "range_end": _range_end(prefix)})
        return [_item(kv) for kv in reply.get("kvs", [])], int(reply["header"]["revision"])

    def revision(self) -> int:
        """The store's revision now."""
        return int(self._post("/kv/range", {"key": _b64("\0")})["header"]["revision"])

    def get(self, key: str) -> Item | None:
        reply = self._post("/kv/range", {"key": _b64(key)})
        kvs = reply.get("kvs", [])
        return _item(kvs[0]) if kvs else None

    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> tuple[bool, int]:
        """One transaction: whether its compares held (and `success` was applied, else `failure`), and
        the store's revision after it."""
        body = {"compare": [_compare(c) for c in compares], "success": [_op(o) for o in success],
                "failure": [_op(o) for o in failure]}
        reply = self._post("/kv/txn", body)
        return bool(reply.get("succeeded", False)), int(reply["header"]["revision"])

    def grant(self, ttl: int) -> int:
        return int(self._post("/lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keepalive(self, lease: int) -> int:
        """The lease's TTL again (-1: it had expired already)."""
        return int(self._post("/lease/keepalive", {"ID": lease}).get("result", {}).get("TTL", -1))

    def revoke(self, lease: int) -> None:
        self._post("/kv/lease/revoke", {"ID": lease})

    def watch(self, prefix: str, revision: int, stop: threading.Event) -> Iterator[list[Event]]:
        """Batches of changes under `prefix` from `revision` on, until `stop`; a stream that breaks or
        falls silent is opened again (on the next endpoint) from after the last revision seen. Raises
        StoreUnavailable when no endpoint will stream, and CompactedError when `revision` is gone."""
        tried: dict[str, str] = {}
        while not stop.is_set():
            index, client = self._pick()
            opened = [False]
            try:
                for batch in _stream(client, prefix, revision, opened):
                    revision = batch[-1].revision + 1
                    yield batch
                    if stop.is_set():
                        return
            except (requests.RequestException, ValueError, KeyError) as e:
                if opened[0] and not isinstance(e, WatchCanceled):
                    tried = {}  # it streamed, then broke or fell silent (WATCH_IDLE): opened again
                    continue
                self._next(index, e, tried, "watch")
            stop.wait(0.1)  # the server ended the stream: opened again, never in a tight loop

    # --- endpoints ---------------------------------------------------------------------------

    def _pick(self) -> tuple[int, etcd3gw.Etcd3Client]:
        with self.lock:
            return self.current, self.clients[self.current]

    def _next(self, index: int, e: Exception, tried: dict[str, str], what: str) -> None:
        """Moves on from the endpoint that failed; raises once every endpoint has failed this call."""
        tried[self.endpoints[index]] = _reason(e)
        with self.lock:
            if self.current == index:
                self.current = (index + 1) % len(self.clients)
        if len(tried) >= len(self.clients):
            raise StoreUnavailable(f"the store did not answer ({what}); tried "
                                   + ", ".join(f"{url} ({why})" for url, why in tried.items()))

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        tried: dict[str, str] = {}
        while True:
            index, client = self._pick()
            try:
                return client.post(client.get_url(path), json=body)
            except (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError,
                    etcd_errors.InternalServerError, requests.RequestException) as e:
                self._next(index, e, tried, path.rsplit("/", 1)[-1])
            except etcd_errors.Etcd3Exception as e:
                raise PermanentError(f"the store refused {path}: {_reason(e)}") from None


class WatchCanceled(requests.RequestException):
    """etcd ended the watch (no leader on that member, say): another endpoint is tried."""


class CompactedError(TemporaryError):
    """The revision a watch asked for was compacted away: read everything again."""


def _stream(client: etcd3gw.Etcd3Client, prefix: str, revision: int, opened: list[bool]) -> Iterator[list[Event]]:
    """The watch stream's batches; `opened[0]` is set once etcd has created the watch (a failure after
    that is the stream's, not the endpoint's)."""
    create: dict[str, Any] = {"create_request": {"key": _b64(prefix), "range_end": _range_end(prefix),
                                 "start_revision": revision}}
    # hasleader: a member cut off from the majority ends the stream ("no leader") rather than keep it
    # open and silent; the watch then moves on to another endpoint
    with client.session.post(client.get_url("/watch"), json=create, stream=True, timeout=(TIMEOUT, WATCH_IDLE),
                             headers={"Grpc-Metadata-hasleader": "true"}) as response:
        if response.status_code != 200:
            raise requests.RequestException(f"watch: HTTP {response.status_code}")
        for line in response.iter_lines():
            if not line.strip():
                continue
            result = json.loads(line)["result"]
            opened[0] = True
            if result.get("compact_revision") and int(result["compact_revision"]) > 0:
                raise CompactedError(f"the store compacted past revision {revision}")
            if result.get("canceled"):
                raise WatchCanceled(result.get("cancel_reason") or "watch canceled")
            events = [_event(e) for e in result.get("events", [])]
            if events:
                yield events


def _event(raw: dict[str, Any]) -> Event:
    kv = raw["kv"]
    deleted = raw.get("type") == "DELETE"
    return Event(_unb64(kv["key"]).decode(), None if deleted else _unb64(kv.get("value", "")),
                 int(kv["mod_revision"]))


def _item(kv: dict[str, Any]) -> Item:
    return Item(_unb64(kv["key"]).decode(), _unb64(kv.get("value", "")), int(kv.get("mod_revision", 0)),
                int(kv.get("version", 0)), int(kv.get("lease", 0)))


def _compare(c: Compare) -> dict[str, Any]:
    field = {"VERSION": "version", "MOD": "mod_revision", "CREATE": "create_revision", "LEASE": "lease",
             "VALUE": "value"}[c.target]
    value = _b64(c.value) if isinstance(c.value, bytes) else c.value
    return {"key": _b64(c.key), "target": c.target, "result": c.op, field: value}


def _op(op: Put | Delete) -> dict[str, Any]:
    if isinstance(op, Put):
        put: dict[str, Any] = {"key": _b64(op.key), "value": _b64(op.value)}
        if op.lease:
            put["lease"] = op.lease
        return {"request_put": put}
    return {"request_delete_range": {"key": _b64(op.key)}}


def _client(url: str, tls: Tls, timeout: float) -> etcd3gw.Etcd3Client:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PermanentError(f"--store: {url!r} is not an endpoint (http://HOST:PORT or https://HOST:PORT)")
    return etcd3gw.Etcd3Client(host=parts.hostname, port=parts.port or 2379, protocol=parts.scheme,
                               ca_cert=tls.ca, cert_key=tls.key, cert_cert=tls.cert, timeout=timeout,
                               api_path="/v3/")


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    for known in ("Connection refused", "timed out", "Name or service not known", "No route to host"):
        if known.lower() in text.lower():
            return known.lower()
    return text[:120]


"""How often a worker died on each input of a run, kept where no worker death can lose it.

Ray restarts a pool actor that dies (killed, out of memory, a crash in a decoder) and retries
its work, forever by default: an input that kills every worker it reaches would stop a job.
So each start of an input is recorded in storage before the work begins, and an input whose
worker died `MAX_ATTEMPTS` times while working on it alone is reported as failed instead.
Storage, not an actor, holds the counts: Ray's OOM monitor kills actors too, and every worker
on every node reads the same ones. The separation job and the evaluation both use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import socket
import uuid
from dataclasses import dataclass

from auralflow_dist import storage

MAX_ATTEMPTS = 3  # deaths of a worker on an input, alone, before the input is failed
LEDGER_NAME = "_attempts"  # the runs' ledgers, at the top of an output folder


@dataclass(frozen=True)
class AttemptLog:
    """The attempts at each input of run ``run_id``, under ``<save>/_attempts/``: a small file
    per start, in storage.

    An input's attempts lie in a folder of their own (a hash of its URL), one object each, named
    ``alone-<id>.json`` or ``shared-<id>.json``: a listing of that folder alone answers how
    often the file was started and how many of those deaths are its own.
    """

    save: str
    run_id: str

    @property
    def root(self) -> str:
        return storage.join(self.save, LEDGER_NAME, self.run_id)

    def _folder(self, url: str) -> str:
        return storage.join(self.root, hashlib.sha1(url.encode()).hexdigest()[:20])

    def earlier(self, url: str) -> list[bool]:
        """Whether each attempt started at ``url`` so far ran alone: each one is a death, since
        an attempt that ends returns a result and is never asked about again."""
        names = [posixpath.basename(u) for u in storage.glob(self._folder(url), "*.json")]
        return [n.startswith("alone-") for n in names]

    def begin(self, url: str, alone: bool) -> None:
        record = {"url": url, "host": socket.gethostname(), "pid": os.getpid()}
        name = f"{'alone' if alone else 'shared'}-{uuid.uuid4().hex}.json"
        storage.write_bytes(
            storage.join(self._folder(url), name), storage.redact(json.dumps(record)).encode()
        )

    def remove(self) -> None:
        """Drop the whole ledger folder: a stopped run's leftovers go with this run's."""
        storage.remove(storage.join(self.save, LEDGER_NAME), missing_ok=True)

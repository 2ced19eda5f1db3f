"""Append-only journal that makes a proposal job resumable after SIGKILL.

One JSON object per line. The first line is a header with the job's fingerprint; each further line is one
finished image. Lines are flushed and fsynced in batches, so a kill loses at most one batch of work, and
can tear only the last line: on reopening, everything after the last complete, parseable line is cut off
before appending, so a restart neither duplicates an image nor builds on a torn record.
"""
import json
import logging
import os
import time

logger = logging.getLogger(__name__)

__all__ = ["ProposalJournal", "JournalMismatchError"]

_HEADER_KEY = "objpretrain_proposal_journal"


class JournalMismatchError(RuntimeError):
    """The journal on disk was written by a job with a different recipe or input list."""


class ProposalJournal:
    """Usage::

        journal = ProposalJournal(path, fingerprint, resume=True)
        done = journal.records          # {index: record} of images finished by earlier runs
        journal.append(record)          # one finished image
        journal.close()                 # flushes and fsyncs the last batch
    """

    def __init__(self, path, fingerprint, resume, sync_every=16, sync_seconds=2.0):
        self.path = path
        self.fingerprint = fingerprint
        self.sync_every = sync_every
        self.sync_seconds = sync_seconds
        self.records = {}
        if os.path.exists(path):
            if not resume:
                raise FileExistsError(
                    f"journal {path} exists from an interrupted run: pass --resume to continue it, or delete it"
                )
            self._load()
        self._file = open(path, "ab")
        if self._file.tell() == 0:
            self._write_line({_HEADER_KEY: 1, "fingerprint": fingerprint})
            self._sync()
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def _load(self):
        with open(self.path, "rb") as f:
            data = f.read()
        valid_end = 0
        header_seen = False
        position = 0
        while position < len(data):
            newline = data.find(b"\n", position)
            if newline < 0:
                break  # a torn last line: no newline was written
            line = data[position:newline]
            try:
                entry = json.loads(line)
            except ValueError:
                if data.find(b"\n", newline + 1) >= 0:
                    raise ValueError(f"{self.path}: line at byte {position} is corrupt (not the last line)")
                break
            if not header_seen:
                if not isinstance(entry, dict) or _HEADER_KEY not in entry:
                    raise ValueError(f"{self.path}: not a proposal journal")
                if entry["fingerprint"] != self.fingerprint:
                    raise JournalMismatchError(
                        f"{self.path} was written by a job with other settings or inputs; "
                        "delete it or write to another --output"
                    )
                header_seen = True
            else:
                self.records[entry["index"]] = entry
            position = valid_end = newline + 1
        if valid_end < len(data):
            logger.warning("%s: ignoring a torn last record (%d bytes)", self.path, len(data) - valid_end)
            with open(self.path, "r+b") as f:
                f.truncate(valid_end)
                f.flush()
                os.fsync(f.fileno())
        logger.info("%s: resuming, %d images already done", self.path, len(self.records))

    def _write_line(self, entry):
        self._file.write(json.dumps(entry, separators=(",", ":")).encode("utf-8") + b"\n")

    def _sync(self):
        self._file.flush()
        os.fsync(self._file.fileno())
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def append(self, record):
        if record["index"] in self.records:
            raise ValueError(f"image {record['id']!r} (index {record['index']}) is already in {self.path}")
        self._write_line(record)
        self.records[record["index"]] = record
        self._unsynced += 1
        if self._unsynced >= self.sync_every or time.monotonic() - self._last_sync >= self.sync_seconds:
            self._sync()

    def close(self):
        if not self._file.closed:
            self._sync()
            self._file.close()

    def remove(self):
        self.close()
        os.remove(self.path)

#!/usr/bin/env python3
"""Archives history older than N days to a gzip NDJSON file, then drops it from the store.

The cut-off is midnight UTC N days ago (a bucket boundary for hour and day buckets). The
fixes before it come from GET /api/v1/history/export as NDJSON and are streamed into
<archive_dir>/history-before-<cutoff>.<run id>.ndjson.gz through a temporary file that is
fsynced, renamed and read back; only then does POST /api/v1/history/drop-before drop the
buckets that end at or before the cut-off. With --dry_run=true nothing is written or dropped.
"""

import argparse
import datetime as dt
import gzip
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from kickstand_api import ApiError, Client, fail, parse_bool  # noqa: E402


def rfc3339(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--older_than_days", type=int, default=90)
    p.add_argument("--archive_dir", default=os.environ.get("KICKSTAND_ARCHIVE_DIR"))
    p.add_argument("--dry_run", type=parse_bool, default=False)
    args = p.parse_args()
    if args.older_than_days < 1:
        fail("--older_than_days must be at least 1")
    if not args.archive_dir and not args.dry_run:
        fail("give --archive_dir (or KICKSTAND_ARCHIVE_DIR)")
    now = dt.datetime.now(dt.timezone.utc)
    cutoff = (now - dt.timedelta(days=args.older_than_days)).replace(
        hour=0, minute=0, second=0, microsecond=0)
    last = cutoff - dt.timedelta(milliseconds=1)
    client = Client()
    params = {"from": "1970-01-01T00:00:00.000Z", "to": rfc3339(last)}

    tmp = None
    count = 0
    resp = client.get_stream("/api/v1/history/export", params)
    try:
        if args.dry_run:
            out = None
        else:
            os.makedirs(args.archive_dir, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=args.archive_dir, prefix=".history-", suffix=".tmp")
            raw = os.fdopen(fd, "wb")
            out = gzip.GzipFile(fileobj=raw, mode="wb")
        for line in resp:
            line = line.strip()
            if not line:
                continue
            try:
                json.loads(line)
            except ValueError:
                fail(f"the export's line {count + 1} is not JSON; nothing dropped")
            if out is not None:
                out.write(line + b"\n")
            count += 1
        if out is not None:
            out.close()
            raw.flush()
            os.fsync(raw.fileno())
            raw.close()
    except BaseException:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        resp.close()

    if count == 0:
        if tmp:
            os.unlink(tmp)
        print(f"no history before {rfc3339(cutoff)}; nothing archived or dropped")
        return
    if args.dry_run:
        print(f"dry run: {count} fix(es) before {rfc3339(cutoff)} would be archived and dropped")
        return

    run = os.environ.get("KICKSTAND_RUN_ID") or now.strftime("%Y%m%dT%H%M%S")
    final = os.path.join(args.archive_dir, f"history-before-{cutoff.date().isoformat()}.{run}.ndjson.gz")
    os.replace(tmp, final)
    fsync_dir(args.archive_dir)
    # Read it back before anything is dropped.
    with gzip.open(final, "rb") as f:
        back = sum(1 for line in f if line.strip())
    if back != count:
        fail(f"{final} holds {back} lines, not {count}; nothing dropped")
    print(f"{count} fix(es) before {rfc3339(cutoff)} archived to {final}")
    answer = client.post_json("/api/v1/history/drop-before", {"before": rfc3339(cutoff)})
    print(f"{answer.get('buckets_dropped', 0)} bucket(s) dropped")


if __name__ == "__main__":
    try:
        main()
    except ApiError as e:
        fail(str(e))

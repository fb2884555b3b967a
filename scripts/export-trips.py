#!/usr/bin/env python3
"""One UTC day's trips as CSV, from the MDS 2.0 trips endpoint.

Asks GET /mds/trips?end_time=YYYY-MM-DDTHH for each of the day's 24 hours (following
`links.next` when a page has one) and writes one CSV row per trip. With --out the file is
<out>/trips-<date>.csv, written to a temporary name, fsynced and renamed; without it the CSV
goes to stdout.
"""

import argparse
import csv
import datetime as dt
import io
import os
import sys
import tempfile
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from kickstand_api import ApiError, Client, fail  # noqa: E402

MDS = "application/vnd.mds+json;version=2.0"
COLUMNS = ["trip_id", "device_id", "start_time", "end_time", "duration_s", "distance_m",
           "start_lat", "start_lon", "end_lat", "end_lon"]


def rfc3339(ms):
    t = dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def row(trip):
    start = trip.get("start_location") or {}
    end = trip.get("end_location") or {}
    return [trip.get("trip_id"), trip.get("device_id"),
            rfc3339(trip["start_time"]), rfc3339(trip["end_time"]),
            trip.get("duration"), trip.get("distance"),
            start.get("lat"), start.get("lng"), end.get("lat"), end.get("lng")]


def hour_trips(client, day, hour):
    params = {"end_time": f"{day.isoformat()}T{hour:02d}"}
    path = "/mds/trips"
    for _ in range(10_000):
        page = client.get_json(path, params, accept=MDS)
        trips = page.get("trips") if isinstance(page, dict) else None
        if not isinstance(trips, list):
            fail(f"{path} answered without a trips list")
        yield from trips
        nxt = (page.get("links") or {}).get("next")
        if not nxt:
            return
        parsed = urllib.parse.urlsplit(nxt)
        path, params = parsed.path, dict(urllib.parse.parse_qsl(parsed.query))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--date", help="YYYY-MM-DD (UTC); default yesterday")
    p.add_argument("--out", help="directory for trips-<date>.csv; default stdout")
    args = p.parse_args()
    today = dt.datetime.now(dt.timezone.utc).date()
    try:
        day = dt.date.fromisoformat(args.date) if args.date else today - dt.timedelta(days=1)
    except ValueError:
        fail(f"--date must be YYYY-MM-DD, not {args.date!r}")
    if day >= today:
        fail(f"{day} is not over yet (UTC); export a past day")
    client = Client()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    count = 0
    for hour in range(24):
        for trip in hour_trips(client, day, hour):
            try:
                w.writerow(row(trip))
            except (KeyError, TypeError) as e:
                fail(f"a trip of {day}T{hour:02d} lacks a field: {e}")
            count += 1
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        final = os.path.join(args.out, f"trips-{day.isoformat()}.csv")
        fd, tmp = tempfile.mkstemp(dir=args.out, prefix=".trips-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", newline="") as f:
                f.write(buf.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        print(f"{count} trip(s) of {day} written to {final}")
    else:
        sys.stdout.write(buf.getvalue())
        print(f"{count} trip(s) of {day}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except ApiError as e:
        fail(str(e))

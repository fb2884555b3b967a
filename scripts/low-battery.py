#!/usr/bin/env python3
"""Vehicles below a battery threshold, lowest first, for the swap crew.

Pages through GET /api/v1/vehicles?bbox=<the world>&battery_lt=<below> and prints a CSV
(or an aligned text list) sorted by battery. A summary goes to stderr.
"""

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from kickstand_api import ApiError, Client, fail  # noqa: E402

WORLD = "-180,-90,180,90"
PAGE = 1000
MAX_PAGES = 10_000


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--below", type=float, default=20.0)
    p.add_argument("--format", choices=["csv", "text"], default="csv")
    args = p.parse_args()
    if not 0 <= args.below <= 100:
        fail("--below must be between 0 and 100")
    client = Client()
    vehicles = []
    cursor = None
    for _ in range(MAX_PAGES):
        params = {"bbox": WORLD, "battery_lt": f"{args.below:g}", "limit": PAGE}
        if cursor:
            params["cursor"] = cursor
        page = client.get_json("/api/v1/vehicles", params)
        if not isinstance(page, dict) or not isinstance(page.get("vehicles"), list):
            fail("/api/v1/vehicles answered without a vehicles list")
        vehicles.extend(page["vehicles"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    else:
        fail(f"more than {MAX_PAGES} pages; stopping")
    vehicles.sort(key=lambda v: (v.get("battery_pct") is None, v.get("battery_pct") or 0, v.get("vehicle_id", "")))
    columns = ["vehicle_id", "battery_pct", "lat", "lon", "state", "ts"]
    if args.format == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(columns)
        for v in vehicles:
            w.writerow(["" if v.get(c) is None else v.get(c) for c in columns])
    else:
        for v in vehicles:
            print(f"{v.get('vehicle_id', ''):<24} {v.get('battery_pct', ''):>6}%  "
                  f"{v.get('lat', '')},{v.get('lon', '')}  {v.get('state', '')}")
    print(f"{len(vehicles)} vehicle(s) below {args.below:g}%", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except ApiError as e:
        fail(str(e))

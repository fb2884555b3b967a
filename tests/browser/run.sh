#!/usr/bin/env bash
# Real-browser test of the live map (issue 3).
#
#   bash tests/browser/run.sh
#
# Installs Debian's chromium if missing, installs playwright-core (npm ci), builds the binary,
# starts `kickstand run --demo 2000 --auth off` on a free loopback port with a temporary data
# directory, runs map.test.mjs against it and stops the server. The screenshot is saved to
# tests/browser/artifacts/map.png and the server's log to tests/browser/artifacts/server.log.
#
# Environment:
#   MAP_TEST_URL=http://…   test a server that is already running instead of starting one
#   MAP_TEST_BIN=path        use this binary instead of building target/debug/kickstand
# (Not KICKSTAND_*: the server reads those as settings and refuses unknown ones.)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
artifacts="$here/artifacts"
mkdir -p "$artifacts"

result() { # the closing line
  if [ "$1" -eq 0 ]; then echo "1 passed, 0 failed"; else echo "0 passed, 1 failed"; fi
}
die() { echo "browser test: $*" >&2; result 1; exit 1; }

# 1. Headless Chromium from Debian (no browser download by Playwright).
if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "browser test: installing chromium with apt-get"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
[ -x /usr/bin/chromium ] || die "/usr/bin/chromium is missing after apt-get install"

# 2. playwright-core, at the exact version in package-lock.json.
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"

# 3. The server under test.
server_pid=""
data=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ -n "$data" ]; then rm -rf "$data"; fi
}
trap cleanup EXIT

url="${MAP_TEST_URL:-}"
if [ -z "$url" ]; then
  bin="${MAP_TEST_BIN:-}"
  if [ -z "$bin" ]; then
    (cd "$root" && cargo build -p kickstand) || die "cargo build failed"
    bin="${CARGO_TARGET_DIR:-$root/target}/debug/kickstand"
  fi
  port=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')
  data=$(mktemp -d)
  log="$artifacts/server.log"

  "$bin" run --demo 2000 --auth off --listen "127.0.0.1:$port" --data "$data" >"$log" 2>&1 &
  server_pid=$!

  # The first stdout line is `Kickstand is running: http://ADDR/...`.
  for _ in $(seq 1 300); do
    url=$(grep -o 'Kickstand is running: http://[^ ]*' "$log" | head -n1 | sed 's/^Kickstand is running: //') || true
    [ -n "$url" ] && break
    kill -0 "$server_pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "the server exited before it was ready"; }
    sleep 0.1
  done
  [ -n "$url" ] || { tail -n 20 "$log" >&2; die "the server did not print its URL within 30 s"; }
  echo "browser test: server at $url (log: $log)"
fi

# 4. The test itself (it gives up after 60 s).
status=0
node "$here/map.test.mjs" "$url" || status=$?
result "$status"
exit "$status"

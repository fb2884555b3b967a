"""A small client for the Kickstand HTTP API, shared by the shipped scripts.

Standard library only. The runner gives each script KICKSTAND_API_URL and KICKSTAND_API_KEY
(declared in its manifest, valued in [runner.env]); every request carries
`Authorization: Bearer $KICKSTAND_API_KEY`. A non-2xx answer raises ApiError with the
server's problem detail, which the scripts print before exiting non-zero.
"""

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT_SECS = 60


class ApiError(Exception):
    """The API answered with an error, or could not be reached."""


class Client:
    def __init__(self, base_url=None, api_key=None):
        base_url = base_url or os.environ.get("KICKSTAND_API_URL")
        if not base_url:
            raise ApiError("KICKSTAND_API_URL is not set (give it a value in [runner.env])")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("KICKSTAND_API_KEY", "")

    def _request(self, method, path, params=None, body=None, accept="application/json"):
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": accept, "User-Agent": "kickstand-script"}
        if self.api_key:
            headers["Authorization"] = "Bearer " + self.api_key
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=TIMEOUT_SECS)
        except urllib.error.HTTPError as e:
            raise ApiError(f"{method} {path} answered {e.code}: {_detail(e)}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ApiError(f"{method} {path} failed: {reason}") from None

    def get_json(self, path, params=None, accept="application/json"):
        with self._request("GET", path, params, accept=accept) as resp:
            return _json(resp, path)

    def post_json(self, path, body):
        with self._request("POST", path, body=body) as resp:
            return _json(resp, path)

    def get_stream(self, path, params=None, accept="application/x-ndjson"):
        """The open response, to read line by line (the caller closes it)."""
        return self._request("GET", path, params, accept=accept)


def _json(resp, path):
    raw = resp.read()
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(f"{path} answered something that is not JSON") from None


def _detail(err):
    try:
        body = json.loads(err.read() or b"{}")
    except ValueError:
        return err.reason
    if isinstance(body, dict):
        # problem+json, or the MDS error body.
        for key in ("detail", "error_description", "error"):
            if body.get(key):
                return str(body[key])
    return err.reason


def parse_bool(text):
    if text in ("true", "false"):
        return text == "true"
    raise ValueError(f"expected true or false, not {text!r}")


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)

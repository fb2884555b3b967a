"""A real SMTP server for the messenger's tests (aiosmtpd).

Usage: python3 server.py --port PORT --dir DIR

It listens on 127.0.0.1:PORT, saves every accepted message to DIR as one `.eml` file (the
envelope sender and recipients in `X-Test-Mail-From` / `X-Test-Rcpt-To` header lines first, then
the message exactly as received), and refuses some recipients on purpose:

- `bounce@example.com`: 550 (permanent; the messenger must record a failure, not retry);
- `later@example.com`: 451 (transient; the messenger must retry).

When it listens it prints `ready` on its own line and flushes, so the test that started it knows
when to connect. It stops on SIGTERM or SIGINT, and with `--watch-stdin` also when its standard input closes (the
test holds a pipe to it, so even a killed test leaves no server behind).
"""

import argparse
import asyncio
import os
import signal
import sys
import threading
import uuid

from aiosmtpd.controller import Controller

REFUSED = {
    "bounce@example.com": "550 5.1.1 <bounce@example.com>: mailbox unavailable",
    "later@example.com": "451 4.3.0 <later@example.com>: try again later",
}


class SaveToDir:
    def __init__(self, directory):
        self.directory = directory

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        refusal = REFUSED.get(address.lower())
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        name = os.path.join(self.directory, f"{uuid.uuid4().hex}.eml")
        head = (
            f"X-Test-Mail-From: {envelope.mail_from}\r\n"
            f"X-Test-Rcpt-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        tmp = name + ".tmp"
        with open(tmp, "wb") as f:
            f.write(head + envelope.original_content)
        os.rename(tmp, name)
        return "250 2.0.0 Message accepted for delivery"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--watch-stdin", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    controller = Controller(SaveToDir(args.dir), hostname="127.0.0.1", port=args.port)
    controller.start()
    print("ready", flush=True)

    stop = asyncio.Event()

    async def wait():
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        if args.watch_stdin:

            def watch():
                # The test holds our standard input: when it exits (even killed), read ends.
                while sys.stdin.buffer.read(1):
                    pass
                loop.call_soon_threadsafe(stop.set)

            threading.Thread(target=watch, daemon=True).start()
        await stop.wait()

    try:
        asyncio.run(wait())
    finally:
        controller.stop()


if __name__ == "__main__":
    main()

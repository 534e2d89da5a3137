#!/usr/bin/env python3
"""How many silent TCP connections does it take before GET /metrics fails?

Starts `vitals run` (the binary given) under an open-files limit of 1024,
as on a stock Linux host, opens N silent connections (connect, send
nothing) for each N given, and after each batch sends a normal scrape that
must be answered within 1 s. Prints one line per N.

    python3 bench/silent_clients.py target/debug/vitals 500 1000 1100 2000 5000

Needs `prlimit` (util-linux) and this process's own open-files limit above
the largest N (it raises its soft limit to the hard one).
"""

import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

CONFIG = """
[system]
enabled = false
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port, timeout=1.0):
    """Seconds a GET /metrics took, or the error if not answered in time."""
    start = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(max(0.001, timeout - (time.monotonic() - start)))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        if not data.startswith(b"HTTP/1.1 200"):
            return f"answered {data[:20]!r}"
        return time.monotonic() - start
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def main():
    binary, counts = sys.argv[1], [int(n) for n in sys.argv[2:]]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for n in counts:
        with tempfile.TemporaryDirectory() as d:
            cfg = os.path.join(d, "vitals.toml")
            with open(cfg, "w") as f:
                f.write(CONFIG)
            port = free_port()
            proc = subprocess.Popen(
                ["prlimit", "--nofile=1024:1024", binary, "run", "--config", cfg,
                 "--web.listen-address", f"127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                for _ in range(100):
                    if isinstance(scrape(port), float):
                        break
                    time.sleep(0.1)
                held = []
                for _ in range(n):
                    held.append(socket.create_connection(("127.0.0.1", port)))
                time.sleep(0.5)
                results = [scrape(port) for _ in range(3)]
                ok = sum(isinstance(r, float) for r in results)
                shown = ", ".join(f"{r * 1000:.0f} ms" if isinstance(r, float) else r
                                  for r in results)
                print(f"{n:6d} silent connections: {ok}/3 scrapes answered within 1 s ({shown})",
                      flush=True)
                for s in held:
                    s.close()
            finally:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()

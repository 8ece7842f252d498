"""A stand-in for a marketplace's payment confirmation endpoint, for scripts/demo: it answers
`GET /purchases/{order}/status` as `peaqos stream distribute` polls it (the reference's
contract): "pending" for the first polls, then "confirmed" with the buyer's id and public key.

    python marketplace.py --port 8470 --order demo-1 --buyer-id buyer-1 --buyer-key HEX [--pending 2]

Prints the URL to poll, then serves until killed. Loopback only."""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--order", required=True)
    parser.add_argument("--buyer-id", required=True)
    parser.add_argument("--buyer-key", required=True, help="the buyer's X25519 public key, hex")
    parser.add_argument("--pending", type=int, default=2, help="polls answered 'pending' first")
    args = parser.parse_args()
    polls = {"n": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != f"/purchases/{args.order}/status":
                self.send_error(404, "no such order")
                return
            polls["n"] += 1
            if polls["n"] <= args.pending:
                body = {"status": "pending", "order_id": args.order}
            else:
                body = {"status": "confirmed", "order_id": args.order, "buyer_id": args.buyer_id,
                        "buyer_public_key_hex": args.buyer_key, "tx_hash": "0x" + "5a" * 32,
                        "confirmed_at": "2026-12-01T00:00:00Z"}
            raw = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *log_args):
            print(f"  marketplace: {self.command} {self.path} -> poll {polls['n']}", file=sys.stderr)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"http://127.0.0.1:{server.server_address[1]}/purchases/{args.order}/status", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

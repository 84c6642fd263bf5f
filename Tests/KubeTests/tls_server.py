"""A TLS server that requires a client certificate, for the client's TLS test.

    python3 tls_server.py CERT_DIR
Prints its port, then answers every GET with JSON naming the client certificate's CN and the
Authorization header it received. CERT_DIR holds ca.crt, server.crt, server.key.
"""
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

directory = sys.argv[1]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        certificate = self.connection.getpeercert() or {}
        subject = dict(item[0] for item in certificate.get("subject", ()))
        body = json.dumps({"major": "1", "minor": "32", "gitVersion": "v1.32.0-tls",
                           "clientCN": subject.get("commonName"),
                           "authorization": self.headers.get("Authorization")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(directory + "/server.crt", directory + "/server.key")
context.load_verify_locations(directory + "/ca.crt")
context.verify_mode = ssl.CERT_REQUIRED
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()

"""A static PEP 503 tree served over HTTPS (the certificate and key given), like a private index
behind TLS; prints "port N" once it listens. Used to check which CAs the gate trusts.

    python3 tls_upstream.py ROOT CERT KEY
"""
import functools
import http.server
import ssl
import sys

root, cert, key = sys.argv[1:4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("port", server.server_address[1], flush=True)
server.serve_forever()

"""git's own `git http-backend` (smart HTTP) behind a TLS server that wants HTTP basic auth.

`/moved/...` is redirected (301) to `/...`, as a forge does for a renamed repository, and
`/to-http/...` to the same path over plain http.

Usage: git_https_server.py ROOT CERT KEY USER TOKEN_FILE PORT_FILE
Writes the port it listens on (127.0.0.1) to PORT_FILE once ready.
"""
import base64
import http.server
import os
import ssl
import subprocess
import sys

root, cert, key, user, token_file, port_file = sys.argv[1:7]
with open(token_file) as f:
    expected = "Basic " + base64.b64encode(f"{user}:{f.read().strip()}".encode()).decode()


def read_chunked(stream):
    body = b""
    while True:
        size = int(stream.readline().split(b";")[0].strip(), 16)
        if size == 0:
            stream.readline()
            return body
        body += stream.read(size)
        stream.readline()


class GitHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, headers, payload):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def git(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = read_chunked(self.rfile)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/moved/"):
            self.reply(301, [("Location", self.path[len("/moved"):])], b"")
            return
        if self.path.startswith("/to-http/"):
            port = self.server.server_address[1]
            self.reply(301, [("Location", f"http://127.0.0.1:{port}{self.path[len('/to-http'):]}")], b"")
            return
        if self.headers.get("Authorization") != expected:
            self.reply(401, [("WWW-Authenticate", 'Basic realm="git"')], b"authentication required\n")
            return
        path, _, query = self.path.partition("?")
        env = dict(
            os.environ,
            GIT_PROJECT_ROOT=root,
            GIT_HTTP_EXPORT_ALL="1",
            PATH_INFO=path,
            QUERY_STRING=query,
            REQUEST_METHOD=self.command,
            CONTENT_TYPE=self.headers.get("Content-Type", ""),
            CONTENT_LENGTH=str(len(body)),
            REMOTE_USER=user,
            REMOTE_ADDR="127.0.0.1",
        )
        for header, variable in [("Content-Encoding", "HTTP_CONTENT_ENCODING"), ("Git-Protocol", "GIT_PROTOCOL")]:
            if self.headers.get(header):
                env[variable] = self.headers[header]
        output = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = output.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.reply(status, headers, payload)

    do_GET = git
    do_POST = git


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GitHandler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()

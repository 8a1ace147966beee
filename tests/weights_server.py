"""A local HTTP server for weights tests: serves stand-in files on 127.0.0.1
with HTTP Range support, optional redirects with Hugging Face-style headers,
throttling and connections cut mid-transfer. Imports no FiftyOne."""

import hashlib
import http.server
import threading
import time


class WeightsServer:
    """Serves ``files`` ({url path: bytes}); records each request."""

    def __init__(self):
        self.files = {}
        self.headers = {}  # path -> extra headers on the response
        self.redirects = {}  # path -> (target path, headers of the 302)
        self.cut_after = {}  # path -> bytes sent before the connection drops
        self.throttle = None  # (chunk bytes, seconds between chunks)
        self.requests = []  # (method, path, Range header or None)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body):
                server.requests.append((self.command, self.path, self.headers.get("Range")))
                if self.path in server.redirects:
                    target, headers = server.redirects[self.path]
                    self.send_response(302)
                    self.send_header("Location", target)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                etag = '"%s"' % hashlib.md5(data).hexdigest()
                start = 0
                rng = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                if rng and rng.startswith("bytes=") and (if_range is None or if_range == etag):
                    start = int(rng[len("bytes="):].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", "bytes */%d" % len(data))
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", "bytes %d-%d/%d"
                                     % (start, len(data) - 1, len(data)))
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", etag)
                for k, v in server.headers.get(self.path, {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not body:
                    return
                payload = data[start:]
                cut = server.cut_after.get(self.path)
                if cut is not None:
                    payload = payload[:cut]
                step, pause = server.throttle or (len(payload) or 1, 0)
                try:
                    for i in range(0, len(payload), step):
                        self.wfile.write(payload[i:i + step])
                        self.wfile.flush()
                        if pause:
                            time.sleep(pause)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if cut is not None:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self):
        return "http://127.0.0.1:%d" % self.httpd.server_address[1]

    def gets(self, path):
        """The Range headers of the GET requests for ``path``."""
        return [r for m, p, r in self.requests if m == "GET" and p == path]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

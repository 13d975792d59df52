"""The WSGI application gunicorn serves under `handover run` in the tests."""
import os


def app(environ, start_response):
    body = f"hello from pid={os.getpid()} gunicorn\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

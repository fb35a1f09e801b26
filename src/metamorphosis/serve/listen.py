"""Where a server listens: ports, TLS files and the socket, checked before anything is announced.

uvicorn reports a busy port or unreadable TLS files by logging a traceback and
exiting after the service already said it was serving, and it never times out
a request whose headers trickle in. So the servers here check the ports and
TLS files and bind the socket themselves (one clear :class:`ConfigError`
naming the flag), then hand uvicorn that socket and an h11 protocol with a
deadline on every request's headers.
"""

from __future__ import annotations

import errno
import math
import socket
import ssl
from pathlib import Path
from typing import Any

from ..config import is_finite_number
from ..errors import ConfigError
from .timeouts import HEADER_TIMEOUT

__all__ = [
    "HEADER_TIMEOUT",
    "MAX_HEADER_BYTES",
    "check_port",
    "check_positive",
    "check_seconds",
    "check_tls",
    "listen_socket",
    "url_of",
    "uvicorn_config",
    "uvicorn_server",
]

#: Largest request line + headers: room for ``max_ids`` repeated ``id=`` parameters.
MAX_HEADER_BYTES = 64 * 1024


def check_port(port: int, flag: str, *, any_port: bool = False) -> None:
    """Refuse a port outside 1..65535 (0 too when ``any_port``: the OS picks a free one)."""
    low = 0 if any_port else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        allowed = "0 (any free port) to 65535" if any_port else "1 to 65535"
        raise ConfigError(f"{flag} {port!r} is invalid: expected a port number from {allowed}")


def check_positive(value: int, flag: str) -> None:
    """Refuse an integer limit below 1 (0 would refuse every request)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{flag} {value!r} is invalid: expected an integer >= 1")


def check_seconds(
    value: float, flag: str, *, zero: bool = False, maximum: float = math.inf
) -> None:
    """Refuse a duration outside (0, maximum] ([0, maximum] with ``zero``), NaN included."""
    if not is_finite_number(value) or value < 0 or (value == 0 and not zero) or value > maximum:
        low = ">= 0" if zero else "> 0"
        high = "" if math.isinf(maximum) else f" and <= {maximum:.0f}"
        raise ConfigError(
            f"{flag} {value!r} is invalid: expected a finite number of seconds {low}{high}"
        )


def _no_password() -> bytes:
    # Without this callback OpenSSL would prompt on the terminal for an encrypted key.
    raise ConfigError("--ssl-keyfile is encrypted: give an unencrypted PEM key")


_PEM_MARKERS = (
    ("--ssl-certfile", "-----BEGIN CERTIFICATE-----", "a PEM certificate"),
    ("--ssl-keyfile", "PRIVATE KEY-----", "a PEM private key"),
)
_SSL_REASONS = {
    "PEM lib": "malformed PEM",
    "KEY_VALUES_MISMATCH": "the key does not belong to the certificate",
}


def _check_pem(flag: str, path: str, marker: str, what: str) -> None:
    try:
        with open(path, "rb") as file:
            head = file.read(1 << 20)
    except OSError as exc:
        detail = exc.strerror or exc
        raise ConfigError(f"{flag} {path!r} cannot be read ({detail}): expected {what}") from exc
    if marker.encode() not in head:
        raise ConfigError(f"{flag} {path!r} holds no {what[2:]}: expected {what} file")


def check_tls(certfile: str | None, keyfile: str | None) -> None:
    """Both files or neither; both readable and loadable as a certificate and its key."""
    if (certfile is None) != (keyfile is None):
        raise ConfigError("give both --ssl-certfile and --ssl-keyfile, or neither")
    if certfile is None or keyfile is None:
        return
    for (flag, marker, what), path in zip(_PEM_MARKERS, (certfile, keyfile), strict=True):
        if not Path(path).is_file():
            raise ConfigError(f"{flag} {path!r} is not a file: expected {what}")
        _check_pem(flag, path, marker, what)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_password)
    except (ssl.SSLError, OSError) as exc:
        text = str(exc)
        reason = getattr(exc, "reason", None) or ("PEM lib" if "PEM lib" in text else text)
        detail = _SSL_REASONS.get(reason, reason)
        raise ConfigError(
            f"--ssl-certfile {certfile!r} / --ssl-keyfile {keyfile!r} cannot be loaded "
            f"({detail}): expected a PEM certificate and its unencrypted PEM private key"
        ) from exc


def url_of(sock: socket.socket, host: str, *, tls: bool) -> str:
    """The base URL a listening socket answers on (its real port; IPv6 hosts bracketed)."""
    where = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{where}:{sock.getsockname()[1]}"


def _bind_error(host: str, port: int, flag: str, exc: OSError) -> ConfigError:
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"--host {host!r} is not an address of this machine ({exc.strerror})")
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"{flag} {port} is already in use on {host}: choose another port")
    if exc.errno == errno.EACCES:
        return ConfigError(f"{flag} {port}: permission denied (ports below 1024 need privileges)")
    return ConfigError(f"cannot listen on {host}:{port} ({flag}): {exc.strerror or exc}")


def listen_socket(host: str, port: int, *, flag: str = "--port") -> socket.socket:
    """A socket listening on ``host:port`` (0: a free port), or a :class:`ConfigError`.

    Binding here rather than in uvicorn makes a busy port a clear error before
    the server announces itself, and leaves no window for another process to
    take the port in between.
    """
    check_port(port, flag, any_port=True)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn decides
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
    except OSError as exc:  # socket.gaierror (an unknown host) included
        sock.close()
        raise _bind_error(host, port, flag, exc) from exc
    except (OverflowError, UnicodeError) as exc:  # a host name no resolver accepts
        sock.close()
        raise ConfigError(f"--host {host!r} is not a valid address ({exc})") from exc
    sock.set_inheritable(True)
    return sock


def uvicorn_config(
    app: Any,
    *,
    host: str,
    port: int,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    header_timeout: float = HEADER_TIMEOUT,
    **options: Any,
) -> Any:
    """A ``uvicorn.Config`` for ``app`` (an ASGI app, or an import string with
    ``factory=True, workers=N`` in ``options``).

    h11 (not httptools) so that the header deadline applies; uvicorn's own
    access log is off, the app's is structured and carries no query strings.
    """
    import uvicorn

    from .deadline import PROTOCOL_PATH, with_timeout

    # by import path when it is the default: a config for workers must pickle
    http = PROTOCOL_PATH if header_timeout == HEADER_TIMEOUT else with_timeout(header_timeout)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        http=http,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=5,
        access_log=False,
        log_level="warning",
        **options,
    )


def uvicorn_server(app: Any, **kwargs: Any) -> Any:
    """A ``uvicorn.Server`` for ``app``, to ``run(sockets=[listen_socket(...)])``
    (``kwargs``: as for :func:`uvicorn_config`)."""
    import uvicorn

    return uvicorn.Server(uvicorn_config(app, **kwargs))

"""The Cityscapes download API, as its official client ``csDownload`` uses it.

GET /login (session cookie), POST /login with the credentials (success is a 302 redirect), then
/md5-sum/?packageID=N and /file-handling/?packageID=N with the session cookie. A failed login does not
fail loudly on the server side: later requests answer an HTML page with status 200, which is why the
md5 reply is checked for shape and the archive for its checksum. Credentials never appear in a message.
"""
from __future__ import annotations

import http.cookiejar
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from deeplab.errors import PipelineError


class CityscapesLoginError(PipelineError):
    """The Cityscapes server refused the credentials or answered something unexpected."""

    exit_code = 1


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)  # never shown by repr() in a traceback or log
    origin: str = ""  # where they came from, for messages ("environment", a file path)


def default_credentials_file(env: Mapping[str, str] = os.environ) -> Path:
    """Where cityscapesscripts' csDownload keeps credentials (appdirs' user data dir on Linux)."""
    data_home = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "cityscapesscripts" / "credentials.json"


def read_credentials(env: dict[str, str], credentials_file: Path | None) -> Credentials | None:
    """Credentials from ``CITYSCAPES_USERNAME``/``CITYSCAPES_PASSWORD`` in ``env``, else from the
    official client's JSON file ``{"username": ..., "password": ...}``, else None."""
    user, password = env.get("CITYSCAPES_USERNAME"), env.get("CITYSCAPES_PASSWORD")
    if user and password:
        return Credentials(user, password, "environment variables CITYSCAPES_USERNAME/CITYSCAPES_PASSWORD")
    if credentials_file is None or not credentials_file.is_file():
        return None
    try:
        data = json.loads(credentials_file.read_text())
        return Credentials(str(data["username"]), str(data["password"]), str(credentials_file))
    except (ValueError, KeyError, TypeError):
        raise CityscapesLoginError(f"{credentials_file}: expected a JSON object with 'username' and "
                                   "'password' (the format cityscapesscripts writes)") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Surface the login redirect instead of following it: the 302 itself is the success signal."""

    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
        return None


def login(server: str, credentials: Credentials, timeout_s: float = 60.0) -> urllib.request.OpenerDirector:
    """An opener holding a logged-in session cookie. Raises :class:`CityscapesLoginError` when the
    server does not answer the POST with a redirect (bad username or password)."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
                                         _NoRedirect())
    url = server.rstrip("/") + "/login"
    try:
        opener.open(url, timeout=timeout_s).close()
        form = urllib.parse.urlencode({"username": credentials.username, "password": credentials.password,
                                       "submit": "Login"}).encode()
        reply = opener.open(urllib.request.Request(url, data=form), timeout=timeout_s)
        reply.close()
    except urllib.error.HTTPError as err:
        if err.code == 302:
            return opener
        raise CityscapesLoginError(f"login at {url} failed: HTTP {err.code} {err.reason}") from None
    raise CityscapesLoginError(
        f"login at {url} refused the credentials from {credentials.origin} (the server answered "
        f"{reply.status} instead of a redirect). Check the username and password; the account must be "
        "approved at https://www.cityscapes-dataset.com/register/")


def package_md5(opener: urllib.request.OpenerDirector, server: str, package: int,
                timeout_s: float = 60.0) -> str:
    """The md5 the server publishes for ``package``; an HTML reply means the session is not logged in."""
    url = f"{server.rstrip('/')}/md5-sum/?packageID={package}"
    with opener.open(url, timeout=timeout_s) as reply:
        text = reply.read(4096).decode("utf-8", "replace")
    words = text.split()
    if not words or not re.fullmatch(r"[0-9a-fA-F]{32}", words[0]):
        raise CityscapesLoginError(f"{url} answered {text[:60]!r}... instead of an md5: the login did not "
                                   "take effect or the account has no access to this package")
    return words[0].lower()


def package_url(server: str, package: int) -> str:
    return f"{server.rstrip('/')}/file-handling/?packageID={package}"

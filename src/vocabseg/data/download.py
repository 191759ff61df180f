"""Download and unpack the official Cityscapes packages.

The Cityscapes site only serves its zips to logged-in users. This module talks to
the same endpoints as ``csDownload`` from cityscapesscripts, but without prompts,
so it can run unattended inside a workflow:

* ``POST /login`` with ``username``, ``password`` and ``submit=Login``; the site
  answers with a redirect (302) when the login worked;
* ``GET /file-handling/?packageID=N`` returns the zip, and honours an HTTP
  ``Range`` header, which is used to resume an interrupted transfer;
* ``GET /md5-sum/?packageID=N`` returns ``"<md5>  <file name>"``.

Layout on disk (``dest`` is the Cityscapes root)::

    dest/zips/<package>.zip            kept after extraction (``zips_dir``)
    dest/zips/<package>.zip.part       an unfinished download, resumed next time
    dest/zips/<package>.zip.corrupt    a zip that failed its check, kept for inspection
    dest/gtFine/..., dest/leftImg8bit/...   exactly as the zips contain them
    dest/.extracted/<package>.done     written after a complete extraction (holds the md5)

With ``staging`` (the workflow's way), all of this happens in the staging folder,
which is renamed to ``dest`` once every package is in: a failure leaves the packages
already verified and extracted in the staging folder, where the next run finds them,
and ``dest`` (a Snakemake output, which Snakemake deletes after a failed job) never
holds a partial dataset.

Failures are of two kinds. A network failure (:class:`TransientDownloadError`) may
pass: with ``network_attempts`` > 1 the package is tried again after
:data:`RETRY_DELAY` seconds (doubling), resuming its ``.part`` file. Everything else
(missing or refused credentials, a corrupt or unsafe zip, an md5 mismatch) is the
user's to fix and is raised at once, so the last message is always the real cause.

Zips that the user already downloaded can be put into ``zips_dir``; they are used
as they are. With credentials their md5 is compared with the site's, without
credentials they are checked offline with the CRC of every member.

Credentials are looked up in this order: an explicit JSON file, the environment
variables ``CITYSCAPES_USERNAME`` / ``CITYSCAPES_PASSWORD``, then the file that
cityscapesscripts itself stores. They are never logged, shown in an error or
written anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import appdirs
import requests

from vocabseg.errors import InputError

__all__ = ["PACKAGES", "DEFAULT_PACKAGES", "DownloadError", "TransientDownloadError", "download_cityscapes"]

#: Package name -> packageID on the Cityscapes site.
PACKAGES: dict[str, int] = {
    "gtFine_trainvaltest.zip": 1,
    "gtCoarse.zip": 2,
    "leftImg8bit_trainvaltest.zip": 3,
    "leftImg8bit_trainextra.zip": 4,
    "camera_trainvaltest.zip": 8,
    "camera_trainextra.zip": 9,
    "vehicle_trainvaltest.zip": 10,
    "vehicle_trainextra.zip": 11,
    "leftImg8bit_demoVideo.zip": 12,
    "gtBbox_cityPersons_trainval.zip": 28,
}

#: What the pipeline needs: fine annotations and the matching images.
DEFAULT_PACKAGES: tuple[str, ...] = ("gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip")

USERNAME_ENV = "CITYSCAPES_USERNAME"
PASSWORD_ENV = "CITYSCAPES_PASSWORD"

#: (connect, read) timeout in seconds for every request.
TIMEOUT: tuple[float, float] = (30.0, 120.0)
#: Bytes read from the network per chunk.
CHUNK_SIZE = 1024 * 1024
#: Without a known size, report progress after this many bytes.
PROGRESS_FALLBACK_BYTES = 512 * 1024 * 1024

#: Seconds before the second try of a package after a network failure (doubling after).
RETRY_DELAY = 30.0

MARKER_DIR = ".extracted"
PART_SUFFIX = ".part"
CORRUPT_SUFFIX = ".corrupt"

_MD5_RE = re.compile(r"^[0-9a-f]{32}$")


class DownloadError(InputError):
    """A failure the user has to act on; the message says what to do."""


class TransientDownloadError(DownloadError):
    """A network failure that may pass by itself (connection lost, timeout, refused)."""


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True, repr=False)
class _Credentials:
    """A username and password, plus a description of where they came from."""

    username: str
    password: str
    source: str

    def __repr__(self) -> str:
        """Never show the secret values, even in a debugger or traceback."""
        return f"_Credentials(source={self.source!r})"

    def redact(self, text: str) -> str:
        """Return ``text`` with the username and password blanked out."""
        for secret in (self.password, self.username):
            if secret:
                text = text.replace(secret, "***")
        return text


def default_credentials_path() -> Path:
    """The file where cityscapesscripts (``csDownload``) stores credentials."""
    return Path(appdirs.user_data_dir("cityscapesscripts", "cityscapes")) / "credentials.json"


def _read_credentials_file(path: Path, source: str) -> _Credentials:
    """Parse a JSON credentials file; never echo its content in an error."""
    expected = 'expected a JSON object {"username": "...", "password": "..."}'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DownloadError(f"credentials file {path} does not exist") from None
    except OSError as err:
        raise DownloadError(f"cannot read credentials file {path}: {err.strerror}") from None
    except ValueError:  # bad JSON or bad encoding; the parser message may quote content
        raise DownloadError(f"credentials file {path} is not valid JSON; {expected}") from None
    if not isinstance(data, dict):
        raise DownloadError(f"credentials file {path} is malformed; {expected}")
    username, password = data.get("username"), data.get("password")
    if not (isinstance(username, str) and username and isinstance(password, str) and password):
        raise DownloadError(
            f"credentials file {path} is malformed: the keys 'username' and 'password' "
            f"must both be non-empty strings; {expected}"
        )
    return _Credentials(username, password, source)


def _credentials_from_env() -> _Credentials | None:
    """Credentials from the two environment variables, or None if neither is set."""
    username = os.environ.get(USERNAME_ENV, "")
    password = os.environ.get(PASSWORD_ENV, "")
    if not username and not password:
        return None
    if not (username and password):
        missing = PASSWORD_ENV if username else USERNAME_ENV
        present = USERNAME_ENV if username else PASSWORD_ENV
        raise DownloadError(f"{present} is set but {missing} is not; set both or neither")
    return _Credentials(username, password, f"environment variables {USERNAME_ENV}/{PASSWORD_ENV}")


def _find_credentials(credentials_file: Path | None) -> _Credentials | None:
    """Look up credentials: explicit file, then environment, then the cityscapesscripts file."""
    if credentials_file is not None:
        path = Path(credentials_file)
        return _read_credentials_file(path, f"file {path}")
    from_env = _credentials_from_env()
    if from_env is not None:
        return from_env
    stored = default_credentials_path()
    if stored.is_file():
        return _read_credentials_file(stored, f"file {stored}")
    return None


def _missing_credentials_message(zips_dir: Path, needed: Sequence[str]) -> str:
    """Explain both ways out: give credentials, or supply the zips by hand."""
    names = ", ".join(needed)
    return (
        f"Cityscapes credentials are needed to download {names}, but none were found.\n"
        "Either provide credentials (an account from https://www.cityscapes-dataset.com/register/):\n"
        '  - a JSON file {"username": "...", "password": "..."} passed with --credentials FILE '
        "(credentials_file= in Python), or\n"
        f"  - the environment variables {USERNAME_ENV} and {PASSWORD_ENV}, or\n"
        f"  - the cityscapesscripts credentials file {default_credentials_path()}\n"
        f"or place the already-downloaded zips ({names}) in {zips_dir} to skip the download."
    )


# --------------------------------------------------------------------------- hashing and files


def _md5_of_file(path: Path) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _quarantine(path: Path, zip_path: Path) -> Path:
    """Rename a bad file to ``<zip name>.corrupt`` so it is neither used nor silently lost."""
    bad = zip_path.with_name(zip_path.name + CORRUPT_SUFFIX)
    os.replace(path, bad)
    return bad


def _marker_path(dest: Path, package: str) -> Path:
    """Where the 'extraction complete' marker of a package lives."""
    return dest / MARKER_DIR / f"{package}.done"


def _write_marker(dest: Path, package: str, md5: str) -> None:
    """Record a complete extraction (atomically, so a crash leaves no half marker)."""
    marker = _marker_path(dest, package)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(md5 + "\n", encoding="utf-8")
    os.replace(tmp, marker)


def _amount(count: float, unit: str) -> str:
    """Human-readable amount: MiB for bytes, a plain count otherwise."""
    return f"{count / 2**20:.1f} MiB" if unit == "bytes" else f"{int(count)} {unit}"


def _progress_logger(
    log: Callable[[str], None], label: str, total: int | None, start: int = 0, unit: str = "bytes"
) -> Callable[[int], None]:
    """Return ``update(done)`` that logs about every 10 % (or every fixed size if total is unknown)."""
    step = total / 10 if total else PROGRESS_FALLBACK_BYTES
    state = {"next": (start // step + 1) * step if step else 0}

    def update(done: int) -> None:
        if done < state["next"]:
            return
        if total:
            log(
                f"{label}: {100 * done // total}% ({_amount(done, unit)} of {_amount(total, unit)})"
            )
        else:
            log(f"{label}: {_amount(done, unit)}")
        state["next"] = (done // step + 1) * step

    return update


# --------------------------------------------------------------------------- the site


class _Site:
    """A session with the Cityscapes site; logs in on first use."""

    def __init__(self, base_url: str, credentials: _Credentials, log: Callable[[str], None]):
        """Remember where and as whom to log in; nothing is sent yet."""
        self.base_url = base_url.rstrip("/")
        self._credentials = credentials
        self._log = log
        self._session: requests.Session | None = None

    def close(self) -> None:
        """Close the HTTP session if one was opened."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def _fail(self, what: str, err: BaseException, hint: str = "") -> TransientDownloadError:
        """The error for a network problem, scrubbed of any credential."""
        detail = self._credentials.redact(f"{type(err).__name__}: {err}")
        return TransientDownloadError(f"{what} failed ({detail}){hint}")

    def session(self) -> requests.Session:
        """The logged-in session (logging in at the first call)."""
        if self._session is None:
            self._session = self._login()
        return self._session

    def _login(self) -> requests.Session:
        """POST the credentials to /login; a redirect means success."""
        self._log(f"logging in to {self.base_url} (credentials from {self._credentials.source})")
        session = requests.Session()
        url = f"{self.base_url}/login"
        form = {
            "username": self._credentials.username,
            "password": self._credentials.password,
            "submit": "Login",
        }
        try:
            # The site sets its session cookie on the login page before the POST.
            session.get(url, allow_redirects=False, timeout=TIMEOUT)
            answer = session.post(url, data=form, allow_redirects=False, timeout=TIMEOUT)
        except requests.RequestException as err:
            session.close()
            raise self._fail(f"login at {self.base_url}/login", err) from None
        if answer.status_code in (301, 302, 303):
            return session
        session.close()
        if answer.status_code == 200:
            raise DownloadError(
                f"login refused for the given credentials ({self._credentials.source}) "
                f"at {self.base_url}/login"
            )
        raise DownloadError(f"login at {self.base_url}/login failed with HTTP {answer.status_code}")

    def md5(self, package: str) -> str:
        """The md5 the site publishes for a package."""
        path = f"/md5-sum/?packageID={PACKAGES[package]}"
        try:
            answer = self.session().get(
                self.base_url + path, allow_redirects=False, timeout=TIMEOUT
            )
        except requests.RequestException as err:
            raise self._fail(f"GET {path} (md5 of {package})", err) from None
        tokens = answer.text.split() if answer.status_code == 200 else []
        md5 = tokens[0].lower() if tokens else ""
        if not _MD5_RE.match(md5):
            raise DownloadError(
                f"GET {path} (md5 of {package}) gave no md5 sum (HTTP {answer.status_code}); "
                "is the account allowed to download this package?"
            )
        return md5

    def download(self, package: str, part: Path) -> None:
        """Stream a package into ``part``, resuming from its current size.

        Network errors keep ``part`` so that the next call resumes.
        """
        path = f"/file-handling/?packageID={PACKAGES[package]}"
        what = f"GET {path} (download of {package})"
        offset = part.stat().st_size if part.exists() else 0
        # Ask for the raw bytes: a compressed answer could not be resumed byte-exactly.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            with self.session().get(
                self.base_url + path,
                headers=headers,
                stream=True,
                allow_redirects=False,
                timeout=TIMEOUT,
            ) as answer:
                self._save_body(answer, package, part, offset, what)
        except requests.RequestException as err:
            hint = f"; the partial file {part} is kept and the next run resumes it"
            raise self._fail(what, err, hint) from None

    def _save_body(
        self, answer: requests.Response, package: str, part: Path, offset: int, what: str
    ) -> None:
        """Write a /file-handling/ answer into ``part`` (see :func:`save_resumed_body`)."""
        save_resumed_body(
            answer, part, offset, what, package, self._log,
            refused="is the account allowed to download this package?",
        )  # fmt: skip


def save_resumed_body(
    answer: requests.Response,
    part: Path,
    offset: int,
    what: str,
    label: str,
    log: Callable[[str], None],
    *,
    refused: str,
) -> None:
    """Write the answer to a GET sent with ``Range: bytes=<offset>-`` (no Range for 0)
    into ``part``: appended for 206, from the start for 200; any other status is a
    :class:`DownloadError` ending with ``refused``, a short body a
    :class:`TransientDownloadError` that keeps ``part`` for the next try."""
    status = answer.status_code
    if status == 416 and offset:
        log(f"{label}: {part.name} already holds the whole file")
        return
    if status == 206:
        if _content_range_start(answer) != offset:
            raise DownloadError(f"{what} resumed at the wrong position; delete {part} and run again")
        log(f"{label}: resuming at {offset / 2**20:.1f} MiB")
        mode, done = "ab", offset
    elif status == 200:
        if offset:
            log(f"{label}: the server did not resume; starting again")
        mode, done = "wb", 0
    else:
        raise DownloadError(f"{what} answered HTTP {status}; {refused}")
    total = _expected_total(answer, done)
    update = _progress_logger(log, f"downloading {label}", total, done)
    try:
        with part.open(mode) as handle:
            for chunk in answer.iter_content(chunk_size=CHUNK_SIZE):
                handle.write(chunk)
                done += len(chunk)
                update(done)
    except requests.RequestException:
        raise  # a network error (also an OSError); reported by the caller
    except OSError as err:
        raise DownloadError(f"writing {part} failed: {err}") from None
    if total is not None and done != total:
        raise TransientDownloadError(
            f"{what} stopped after {done} of {total} bytes; "
            f"the partial file {part} is kept and the next run resumes it"
        )


def _content_range_start(answer: requests.Response) -> int | None:
    """First byte position of a 206 answer's ``Content-Range: bytes a-b/n``."""
    match = re.match(r"bytes (\d+)-", answer.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _expected_total(answer: requests.Response, start: int) -> int | None:
    """Full size of the file after this answer, if the headers tell it."""
    content_range = answer.headers.get("Content-Range", "")
    match = re.match(r"bytes \d+-\d+/(\d+)$", content_range.strip())
    if match:
        return int(match.group(1))
    length = answer.headers.get("Content-Length")
    if answer.headers.get("Content-Encoding", "identity") != "identity":
        return None  # the length is of the encoded body, not of the file
    return start + int(length) if length and length.isdigit() else None


# --------------------------------------------------------------------------- verification


def _download_package(site: _Site, package: str, zip_path: Path, log: Callable[[str], None]) -> str:
    """Download ``package`` to ``zip_path`` via a ``.part`` file; return its checked md5."""
    part = zip_path.with_name(zip_path.name + PART_SUFFIX)
    log(f"downloading {package} to {zip_path}")
    site.download(package, part)
    expected = site.md5(package)
    actual = _md5_of_file(part)
    if actual != expected:
        bad = _quarantine(part, zip_path)
        raise DownloadError(
            f"md5 of the downloaded {package} is {actual}, the site says {expected}; "
            f"the file was kept as {bad}; delete it and run again"
        )
    os.replace(part, zip_path)
    log(f"{package}: download complete, md5 {actual} verified")
    return actual


def _check_zip_with_site(
    site: _Site, package: str, zip_path: Path, log: Callable[[str], None]
) -> str:
    """Compare an existing zip's md5 with the site's; return it."""
    log(f"{package}: using existing {zip_path}; checking its md5 with the site")
    expected = site.md5(package)
    actual = _md5_of_file(zip_path)
    if actual != expected:
        bad = _quarantine(zip_path, zip_path)
        raise DownloadError(
            f"md5 of {zip_path} is {actual}, the site says {expected}; the file was renamed "
            f"to {bad}; replace it with a good copy (or remove it to download again)"
        )
    log(f"{package}: md5 {actual} verified")
    return actual


def _check_zip_offline(package: str, zip_path: Path, log: Callable[[str], None]) -> str:
    """Without credentials: check every member's CRC; return the zip's md5."""
    log(
        f"{package}: using existing {zip_path}; md5 could not be checked (no credentials), "
        "verifying it offline with the zip's CRC checks"
    )
    try:
        with zipfile.ZipFile(zip_path) as archive:
            first_bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        first_bad = f"<archive structure: {err}>"
    if first_bad is not None:
        bad = _quarantine(zip_path, zip_path)
        raise DownloadError(
            f"{zip_path} is corrupt (first bad member: {first_bad}); the file was renamed "
            f"to {bad}; replace it with a good copy"
        )
    return _md5_of_file(zip_path)


# --------------------------------------------------------------------------- extraction


def _unsafe_reason(name: str) -> str | None:
    """Why a zip member name could escape the destination, or None if it is safe."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised):
        return "absolute path"
    if ".." in PurePosixPath(normalised).parts:
        return "'..' in path"
    return None


def _check_members(archive: zipfile.ZipFile, zip_path: Path, dest: Path) -> None:
    """Reject the whole zip if any member would land outside ``dest``."""
    root = dest.resolve()
    for name in archive.namelist():
        reason = _unsafe_reason(name)
        if reason is None and not (root / name).resolve().is_relative_to(root):
            reason = "resolves outside the destination"
        if reason is not None:
            raise DownloadError(
                f"{zip_path} contains the unsafe member {name!r} ({reason}); nothing was extracted"
            )


def _extract(zip_path: Path, dest: Path, package: str, log: Callable[[str], None]) -> None:
    """Extract all members into ``dest`` after checking every path."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            _check_members(archive, zip_path, dest)
            members = archive.infolist()
            update = _progress_logger(log, f"extracting {package}", len(members), unit="files")
            for index, member in enumerate(members, start=1):
                archive.extract(member, dest)
                update(index)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise DownloadError(f"{zip_path} could not be extracted ({err}); replace it") from None
    except OSError as err:
        raise DownloadError(f"extracting {zip_path} into {dest} failed: {err}") from None


# --------------------------------------------------------------------------- entry point


def _check_package_names(packages: Sequence[str]) -> list[str]:
    """The requested names, de-duplicated; unknown names are an error."""
    unknown = [name for name in packages if name not in PACKAGES]
    if unknown:
        raise DownloadError(
            f"unknown Cityscapes package(s): {', '.join(unknown)}; known packages: "
            + ", ".join(sorted(PACKAGES))
        )
    return list(dict.fromkeys(packages))


def download_cityscapes(
    dest: Path,
    packages: Sequence[str] = DEFAULT_PACKAGES,
    *,
    zips_dir: Path | None = None,
    credentials_file: Path | None = None,
    base_url: str = "https://www.cityscapes-dataset.com",
    log: Callable[[str], None] = print,
    staging: Path | None = None,
    network_attempts: int = 1,
) -> None:
    """Make ``dest`` hold the extracted Cityscapes ``packages``.

    Packages whose marker ``<root>/.extracted/<name>.done`` exists are skipped without
    any network access. For the others, a zip in ``zips_dir`` (default ``<root>/zips``)
    is used if present, otherwise it is downloaded (resuming a ``.part`` file).
    Every zip is verified (md5 from the site, or CRC offline without credentials),
    then extracted safely, then marked as done. ``<root>`` is ``dest``, or
    ``staging`` when given and ``dest`` does not exist yet: it is renamed to ``dest``
    when every package is in, and keeps what was done after a failure.
    ``network_attempts`` tries per package when the network fails.

    Raises:
        DownloadError: for anything the user has to fix; the message says what.
        TransientDownloadError: the network failed ``network_attempts`` times.
    """
    if isinstance(packages, str):
        packages = [packages]
    names = _check_package_names(packages)
    dest = Path(dest)
    root = Path(staging) if staging is not None and not dest.exists() else dest
    _fill(root, names, zips_dir, credentials_file, base_url, log, network_attempts)
    if root != dest:
        os.replace(root, dest)
        log(f"all packages in place: moved {root} to {dest}")


def _fill(
    dest: Path,
    names: list[str],
    zips_dir: Path | None,
    credentials_file: Path | None,
    base_url: str,
    log: Callable[[str], None],
    network_attempts: int,
) -> None:
    """Make ``dest`` hold the extracted packages ``names`` (see :func:`download_cityscapes`)."""
    zips_dir = Path(zips_dir) if zips_dir is not None else dest / "zips"

    pending = [name for name in names if not _marker_path(dest, name).is_file()]
    for name in names:
        if name not in pending:
            log(f"{name}: already extracted in {dest}")
    if not pending:
        return

    credentials = _find_credentials(credentials_file)
    to_download = [name for name in pending if not (zips_dir / name).is_file()]
    if to_download and credentials is None:
        raise DownloadError(_missing_credentials_message(zips_dir, to_download))

    dest.mkdir(parents=True, exist_ok=True)
    zips_dir.mkdir(parents=True, exist_ok=True)
    site = _Site(base_url, credentials, log) if credentials is not None else None
    try:
        for name in pending:
            for attempt in range(1, network_attempts + 1):
                try:
                    _install_package(name, dest, zips_dir, site, log)
                    break
                except TransientDownloadError as err:
                    if attempt == network_attempts:
                        raise
                    delay = RETRY_DELAY * 2 ** (attempt - 1)
                    log(f"{err}; network attempt {attempt} of {network_attempts}, next in {delay:g} s")
                    time.sleep(delay)
    finally:
        if site is not None:
            site.close()


def _install_package(
    name: str, dest: Path, zips_dir: Path, site: _Site | None, log: Callable[[str], None]
) -> None:
    """Obtain, verify, extract and mark one package."""
    zip_path = zips_dir / name
    if not zip_path.is_file():
        md5 = _download_package(site, name, zip_path, log)
    elif site is not None:
        md5 = _check_zip_with_site(site, name, zip_path, log)
    else:
        md5 = _check_zip_offline(name, zip_path, log)
    log(f"extracting {zip_path} into {dest}")
    _extract(zip_path, dest, name, log)
    _write_marker(dest, name, md5)
    log(f"{name}: done")
